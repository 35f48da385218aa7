//! The fixed set of gRPC methods the gateway serves, and what each one is: its
//! names for logs, spans and metric labels, who may call it, and how large its
//! request messages may be. Everything keyed by the request path reads it here,
//! so a path from outside (any caller, before authentication) only ever selects
//! one of these entries, never a new label or a new bucket: an unknown path is
//! [`UNKNOWN`].

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health: never behind auth (probes carry no credentials).
    Open,
    /// Reflection: public or behind auth, as the settings say.
    Reflection,
    /// The `attachments.read` scope.
    Read,
    /// The `attachments.write` scope.
    Write,
    /// No such method: any authenticated caller reaches its UNIMPLEMENTED.
    Unknown,
}

/// How large a method's request messages may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestSize {
    /// Every message is a small one.
    Small,
    /// The first message is small (the metadata), later ones carry file chunks.
    Upload,
}

/// One gRPC method.
#[derive(Debug)]
pub struct Method {
    /// `/package.Service/Method`.
    pub path: &'static str,
    /// `package.Service`, as spans and metrics name it.
    pub service: &'static str,
    /// `Method`, as spans and metrics name it.
    pub name: &'static str,
    pub access: Access,
    pub request: RequestSize,
}

const SVC: &str = "corrigopro.attachments.v1.AttachmentService";

const fn rpc(
    path: &'static str,
    service: &'static str,
    name: &'static str,
    access: Access,
    request: RequestSize,
) -> Method {
    Method {
        path,
        service,
        name,
        access,
        request,
    }
}

/// Every method served.
pub static METHODS: &[Method] = &[
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/UploadAttachment",
        SVC,
        "UploadAttachment",
        Access::Write,
        RequestSize::Upload,
    ),
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/ListAttachments",
        SVC,
        "ListAttachments",
        Access::Read,
        RequestSize::Small,
    ),
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/GetDownloadUrl",
        SVC,
        "GetDownloadUrl",
        Access::Read,
        RequestSize::Small,
    ),
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/DownloadAttachment",
        SVC,
        "DownloadAttachment",
        Access::Read,
        RequestSize::Small,
    ),
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/UpdateAttachment",
        SVC,
        "UpdateAttachment",
        Access::Write,
        RequestSize::Small,
    ),
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/DeleteAttachment",
        SVC,
        "DeleteAttachment",
        Access::Write,
        RequestSize::Small,
    ),
    rpc(
        "/corrigopro.attachments.v1.AttachmentService/WatchAttachments",
        SVC,
        "WatchAttachments",
        Access::Read,
        RequestSize::Small,
    ),
    rpc(
        "/grpc.health.v1.Health/Check",
        "grpc.health.v1.Health",
        "Check",
        Access::Open,
        RequestSize::Small,
    ),
    rpc(
        "/grpc.health.v1.Health/Watch",
        "grpc.health.v1.Health",
        "Watch",
        Access::Open,
        RequestSize::Small,
    ),
    rpc(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1.ServerReflection",
        "ServerReflectionInfo",
        Access::Reflection,
        RequestSize::Small,
    ),
    rpc(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "grpc.reflection.v1alpha.ServerReflection",
        "ServerReflectionInfo",
        Access::Reflection,
        RequestSize::Small,
    ),
];

/// Any path that is not one of [`METHODS`].
pub static UNKNOWN: Method = rpc(
    "",
    "unknown",
    "unknown",
    Access::Unknown,
    RequestSize::Small,
);

/// The method a request path names.
pub fn method(path: &str) -> &'static Method {
    METHODS.iter().find(|m| m.path == path).unwrap_or(&UNKNOWN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_methods_and_nothing_else_is_known() {
        for m in METHODS {
            assert_eq!(m.path, format!("/{}/{}", m.service, m.name));
            assert!(std::ptr::eq(method(m.path), m));
        }
        for odd in [
            "",
            "/",
            "/x/y",
            "/grpc.health.v1.Health/",
            "/corrigopro.attachments.v1.AttachmentService/Nope",
        ] {
            assert!(std::ptr::eq(method(odd), &UNKNOWN), "{odd:?}");
        }
    }
}
