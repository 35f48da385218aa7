//! Uploads a file to a work order through the gateway.
//!
//! ```sh
//! cargo run --example upload_file -- http://127.0.0.1:50051 1001 photo.jpg "Ana Tech"
//! ```
//! With auth on, set `ATTACHMENT_GATEWAY_API_KEY` (or `ATTACHMENT_GATEWAY_TOKEN`).

use attachment_gateway::client::{GatewayClient, NewUpload};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, work_order, path, performed_by] = args.as_slice() else {
        eprintln!("usage: upload_file ADDR WORK_ORDER FILE PERFORMED_BY");
        std::process::exit(2);
    };
    let mut builder = GatewayClient::builder(addr.clone());
    if let Ok(token) = std::env::var("ATTACHMENT_GATEWAY_TOKEN") {
        builder = builder.bearer_token(token);
    } else if let Ok(key) = std::env::var("ATTACHMENT_GATEWAY_API_KEY") {
        builder = builder.api_key(key);
    }
    let client = builder.connect().await?;
    let meta = NewUpload::new(work_order.parse()?, performed_by.clone());
    match client.upload_file(path, meta).await {
        Ok(r) => {
            println!("{} {} {}", r.attachment_id, r.size_bytes, r.sha256);
            Ok(())
        }
        Err(e) => {
            // The error says whether retrying could help.
            eprintln!("upload failed: {e} (retryable: {})", e.is_retryable());
            std::process::exit(1);
        }
    }
}
