//! Request-reply: a price service and a caller, live and over a durable queue.
//!
//! Start a broker (`cargo run --release --bin ternd`), then:
//!
//! ```text
//! cargo run --example rpc
//! ```
//!
//! The live service answers whoever is subscribed when the request is published; the
//! durable one takes requests from a queue, so a request survives a service that is
//! down or crashes mid-request (it is redelivered to another worker — which is why
//! durable handlers must be idempotent).

use std::time::Duration;

use tern::{Client, Error, Qos, QueueConfig, ServiceRequest};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let server = std::env::var("TERN_SERVER").unwrap_or_else(|_| "127.0.0.1:7400".into());
    let service = Client::builder()
        .name("price-service")
        .connect(&server)
        .await?;
    let caller = Client::builder()
        .name("rpc-caller")
        .connect(&server)
        .await?;

    // A live service, two instances sharing the load through a queue group.
    let _a = service
        .serve("prices.quote")
        .group("pricing")
        .run(quote)
        .await?;
    let _b = service
        .serve("prices.quote")
        .group("pricing")
        .run(quote)
        .await?;

    let reply = caller.request("prices.quote", "widget").await?;
    println!(
        "quote for widget: {}",
        String::from_utf8_lossy(&reply.payload)
    );

    match caller.request("prices.quote", "unobtainium").await {
        Err(Error::Service { message }) => println!("the service refused: {message}"),
        other => println!("unexpected: {other:?}"),
    }

    match caller
        .request("prices.nobody-home", "x")
        .timeout(Duration::from_secs(10))
        .await
    {
        Err(Error::NoResponders { subject }) => println!("no responders on {subject}, at once"),
        other => println!("unexpected: {other:?}"),
    }

    // The durable variant: requests wait in a queue until a worker takes them.
    caller
        .declare_queue(&QueueConfig::new("prices.durable").bind("prices.durable"))
        .await?;
    let _worker = service
        .serve_queue("prices.durable")
        .prefetch(1)
        .run(quote)
        .await?;
    let reply = caller
        .request("prices.durable", "gadget")
        .qos(Qos::AtLeastOnce)
        .await?;
    println!(
        "durable quote for gadget: {}",
        String::from_utf8_lossy(&reply.payload)
    );

    caller.close().await?;
    service.close().await
}

/// The handler: a price per item, or an error the caller sees as `Error::Service`.
async fn quote(request: ServiceRequest) -> Result<String, String> {
    let item = String::from_utf8_lossy(&request.message.payload).to_string();
    if let Some(left) = request.remaining() {
        // A real service would give up on work that cannot finish in time.
        assert!(left <= Duration::from_secs(5));
    }
    match item.as_str() {
        "widget" => Ok("4.20".into()),
        "gadget" => Ok("13.37".into()),
        other => Err(format!("no price for '{other}'")),
    }
}
