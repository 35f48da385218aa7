//! Downloads an attachment into a file, streamed.
//!
//! ```sh
//! cargo run --example download -- http://127.0.0.1:50051 1001 <attachment-id> out.bin
//! ```

use attachment_gateway::client::GatewayClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, work_order, attachment_id, out] = args.as_slice() else {
        eprintln!("usage: download ADDR WORK_ORDER ATTACHMENT_ID OUT_FILE");
        std::process::exit(2);
    };
    let mut builder = GatewayClient::builder(addr.clone());
    if let Ok(key) = std::env::var("ATTACHMENT_GATEWAY_API_KEY") {
        builder = builder.api_key(key);
    }
    let client = builder.connect().await?;
    let mut file = tokio::fs::File::create(out).await?;
    let meta = client
        .download_to(work_order.parse()?, attachment_id, &mut file, None)
        .await?;
    println!("{} {} {}", meta.name, meta.mime_type, meta.size_bytes);
    Ok(())
}
