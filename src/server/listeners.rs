//! The sockets the gateway serves on, bound before anything says "serving".

use tokio::net::TcpListener;

use super::error::ServeError;
use crate::config::Settings;

/// The sockets the gateway serves on. All of them are bound before anything says
/// the gateway is serving, so a failure to bind one stops it before that.
pub struct Listeners {
    pub grpc: TcpListener,
    /// The admin HTTP port (`/metrics`, probes); none when turned off.
    pub admin: Option<TcpListener>,
    /// CorrigoPro's notifications (`/webhooks/corrigopro`); none when turned off.
    pub webhooks: Option<TcpListener>,
}

impl Listeners {
    /// Binds `listen` and the admin address of the settings.
    pub async fn bind(settings: &Settings) -> Result<Self, ServeError> {
        let grpc = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| ServeError::Listen(settings.listen, e))?;
        Self::with_grpc(settings, grpc).await
    }

    /// Binds what the settings ask for besides the gRPC listener given.
    pub async fn with_grpc(settings: &Settings, grpc: TcpListener) -> Result<Self, ServeError> {
        Ok(Self {
            grpc,
            admin: bind_admin(settings).await?,
            webhooks: bind_webhooks(settings).await?,
        })
    }
}

/// The webhook listener: `webhooks.listen`; with `--sandbox` and none set, a free
/// loopback port (the emulator delivers its notifications there).
async fn bind_webhooks(settings: &Settings) -> Result<Option<TcpListener>, ServeError> {
    let addr = match settings.webhooks.listen {
        Some(a) => a,
        None if settings.sandbox.enabled => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        None => return Ok(None),
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| ServeError::Webhooks(addr, e))
}

/// The admin listener. An address set explicitly must be bound. With `--sandbox`,
/// the default address gives way to a free port when it is taken (9090 is also
/// Prometheus's default), and the gateway serves without the admin port if even
/// that fails: a newcomer's first run should not fail over an address they never
/// asked for.
async fn bind_admin(settings: &Settings) -> Result<Option<TcpListener>, ServeError> {
    let Some(addr) = settings.telemetry.admin_listen else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if settings.sandbox.enabled && !settings.explicit.admin_listen => {
            let free = std::net::SocketAddr::new(addr.ip(), 0);
            match TcpListener::bind(free).await {
                Ok(l) => {
                    tracing::warn!(%addr, error = %e, "the default admin address is taken: serving metrics on a free port instead");
                    Ok(Some(l))
                }
                Err(e2) => {
                    tracing::warn!(%addr, error = %e2, "cannot bind an admin port: serving without metrics");
                    Ok(None)
                }
            }
        }
        Err(e) => Err(ServeError::Admin(addr, e)),
    }
}
