//! `attachment-gateway`: loads the settings, starts logging (and the sandbox when
//! asked), and serves until SIGTERM or Ctrl-C. With a subcommand (`upload`,
//! `list`, `download`, `url`, `update`, `delete`) it is a client of a gateway.

mod cli;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use std::sync::Arc;

use attachment_gateway::config::{FlagOverrides, LogFormat, Settings, redact_url};
use attachment_gateway::metrics::Metrics;
use attachment_gateway::sandbox::{Sandbox, SandboxConfig};
use attachment_gateway::{server, telemetry};
use clap::Parser;

/// mimalloc: the gateway allocates many small, short-lived objects per call
/// (JSON values, protobuf maps, headers); glibc malloc spent a quarter of the
/// unary-call CPU in malloc/free (see BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gRPC gateway in front of the CorrigoPro Direct API's attachments endpoints.
///
/// Settings come from defaults, then the TOML file given with --config, then
/// environment variables prefixed ATTACHMENT_GATEWAY_ (nested keys joined by `__`,
/// e.g. ATTACHMENT_GATEWAY_UPSTREAM__CLIENT_ID), then these flags.
#[derive(Debug, Parser)]
#[command(
    name = "attachment-gateway",
    version,
    args_conflicts_with_subcommands = true
)]
#[command(
    after_help = "Client exit codes: 0 done, 2 bad input, 3 not found, 4 not allowed, \
5 refused by the work order's state, 75 temporary failure (safe to retry), 1 other."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<cli::Command>,
    /// A TOML settings file.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where the gRPC server listens (setting `listen`).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Start the embedded CorrigoPro emulator on loopback and use it as the upstream.
    #[arg(long)]
    sandbox: bool,
    /// Where the admin (metrics) server listens (setting `telemetry.admin_listen`).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Where the webhook listener (CorrigoPro's notifications) listens (setting
    /// `webhooks.listen`; off when unset, except with --sandbox).
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,
    /// The upstream Direct API base URL (setting `upstream.base_url`).
    #[arg(long, value_name = "URL")]
    upstream_base_url: Option<String>,
    /// Log output: pretty or json (setting `log.format`).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    log_format: Option<LogFormat>,
    /// Load and validate the settings, print them (secrets redacted) and exit.
    #[arg(long)]
    check_config: bool,
}

fn parse_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `pretty` or `json`".into()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(cmd) = cli.command {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("attachment-gateway: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        attachment_gateway::upstream::install_crypto_provider();
        return runtime.block_on(cli::run(cmd));
    }
    let flags = FlagOverrides {
        listen: cli.listen,
        upstream_base_url: cli.upstream_base_url.clone(),
        log_format: cli.log_format,
        admin_listen: cli.admin_listen,
        webhook_listen: cli.webhook_listen,
        sandbox: cli.sandbox,
    };
    let settings = match Settings::load(cli.config.as_deref(), &flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("attachment-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        return match settings.to_toml() {
            Ok(t) => {
                println!("{t}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("attachment-gateway: cannot print the settings: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if settings.server.worker_threads > 0 {
        builder.worker_threads(settings.server.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("attachment-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Inside the runtime: the trace exporter's batch task lives there.
        let _telemetry = telemetry::init(&settings.log)?;
        run(settings).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attachment-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = shutdown_signal();
    let _sandbox = if settings.sandbox.enabled {
        let sandbox = Sandbox::start(SandboxConfig {
            listen: settings.sandbox.listen,
            token_ttl: settings.sandbox.token_ttl,
            link_ttl: settings.sandbox.link_ttl,
            max_file_bytes: settings.limits.max_upload_bytes,
            seed: true,
            faults: None,
            notification_retry_minute: settings.sandbox.notification_retry_minute,
        })
        .await
        .map_err(|e| {
            format!(
                "cannot start the sandbox on {}: {e}",
                settings.sandbox.listen
            )
        })?;
        settings.upstream = sandbox.upstream_settings(&settings.upstream);
        Some(sandbox)
    } else {
        None
    };
    // Every listener is bound before anything says "serving".
    let listeners = server::Listeners::bind(&settings).await?;
    let addr = listeners.grpc.local_addr()?;
    let admin = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    let webhooks = listeners
        .webhooks
        .as_ref()
        .and_then(|l| l.local_addr().ok());
    tracing::info!(%addr, upstream = %redact_url(&settings.upstream.base_url), "attachment-gateway listening");
    if let Some(sandbox) = &_sandbox {
        let auth = if settings.unauthenticated_allowed() {
            "off (sandbox default: configure auth.* to turn it on)"
        } else {
            "on (see the auth.* settings)"
        };
        if let Some(w) = webhooks {
            sandbox.deliver_to(format!("http://{w}{}", attachment_gateway::webhooks::PATH));
        }
        print_sandbox_banner(addr, admin, webhooks, sandbox, auth);
    }
    server::serve_with(settings, listeners, Arc::new(Metrics::new()), shutdown).await?;
    tracing::info!("attachment-gateway stopped");
    Ok(())
}

fn print_sandbox_banner(
    addr: SocketAddr,
    admin: Option<SocketAddr>,
    webhooks: Option<SocketAddr>,
    sandbox: &Sandbox,
    auth: &str,
) {
    let work_orders = attachment_gateway::sandbox::seed()
        .iter()
        .map(|(id, status)| format!("{id} ({status})"))
        .collect::<Vec<_>>()
        .join(", ");
    let admin = match admin {
        Some(a) => format!("http://{a}/metrics"),
        None => "off".to_string(),
    };
    let webhooks = match webhooks {
        Some(w) => format!(
            "http://{w}{} (the emulator delivers its notifications here)",
            attachment_gateway::webhooks::PATH
        ),
        None => "off".to_string(),
    };
    let emulator = sandbox.addr();
    // The binary as it was started (`cargo run` puts it under target/), so the
    // command below runs as printed.
    let me = std::env::current_exe()
        .ok()
        .map(|p| p.display().to_string())
        .filter(|p| !p.contains(char::is_whitespace))
        .unwrap_or_else(|| "attachment-gateway".into());
    // Never fatal: stdout may be closed (piped to `head`, a finished reader).
    let _ = writeln!(
        std::io::stdout(),
        "attachment-gateway (sandbox) serving gRPC on {addr}\n\
         metrics: {admin}\n\
         webhooks: {webhooks}\n\
         sandbox upstream (CorrigoPro emulator): {}\n\
         work orders: {work_orders}\n\
         authentication: {auth}\n\
         try:\n  grpcurl -plaintext -d '{{\"work_order_id\": 1001}}' {addr} corrigopro.attachments.v1.AttachmentService/ListAttachments\n\
         watch events (in another terminal):\n  {me} watch --addr http://{addr}\n\
         act as the customer (CorrigoPro notifies the gateway):\n  curl -X POST --data-binary 'hello' 'http://{emulator}/sandbox/customer/work-orders/1001/attachments?name=hello.txt'\n\
         stop with Ctrl-C",
        sandbox.base_url()
    );
}

/// A future that ends at SIGTERM or Ctrl-C. The handlers are installed here, at
/// once, not when the future is first polled: a SIGTERM that arrives while the
/// gateway is still starting asks for a drain instead of killing the process.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).ok()
    };
    let ctrl_c = tokio::signal::ctrl_c();
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => {}
                _ = ctrl_c => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}
