//! Lists a work order's attachments.
//!
//! ```sh
//! cargo run --example list -- http://127.0.0.1:50051 1001
//! ```

use attachment_gateway::client::GatewayClient;
use attachment_gateway::proto::AttachmentView;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, work_order] = args.as_slice() else {
        eprintln!("usage: list ADDR WORK_ORDER");
        std::process::exit(2);
    };
    let mut builder = GatewayClient::builder(addr.clone());
    if let Ok(key) = std::env::var("ATTACHMENT_GATEWAY_API_KEY") {
        builder = builder.api_key(key);
    }
    let client = builder.connect().await?;
    // The typed fields are all this prints: the BASIC view leaves out each
    // attachment's raw upstream object, which is cheaper for everyone.
    for a in client
        .list_with_view(work_order.parse()?, AttachmentView::Basic)
        .await?
    {
        println!(
            "{}\t{}\t{}\t{}",
            a.attachment_id, a.size_bytes, a.mime_type, a.name
        );
    }
    Ok(())
}
