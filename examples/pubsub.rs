//! Publish-subscribe with wildcards and queue groups.
//!
//! Start a broker (`cargo run --release --bin ternd`), then:
//!
//! ```text
//! cargo run --example pubsub
//! ```
//!
//! Set `TERN_SERVER` to use a broker elsewhere than 127.0.0.1:7400.

use std::time::Duration;
use tern::Client;

#[tokio::main]
async fn main() -> Result<(), tern::Error> {
    let server = std::env::var("TERN_SERVER").unwrap_or_else(|_| "127.0.0.1:7400".into());
    let client = Client::builder()
        .name("pubsub-example")
        .connect(&server)
        .await?;

    // Every temperature, whatever the room: `*` matches one token.
    let mut temps = client.subscribe("sensors.*.temp").await?;
    // Two workers share the load of one queue group: each reading goes to one of them.
    let mut worker_a = client.queue_subscribe("sensors.>", "archivers").await?;
    let mut worker_b = client.queue_subscribe("sensors.>", "archivers").await?;

    for (room, value) in [("kitchen", "21.5"), ("hall", "19.0"), ("attic", "25.3")] {
        let subject = format!("sensors.{room}.temp");
        client
            .publish(&subject, value.to_string())
            .header("unit", "celsius")
            .await?;
    }
    client.flush().await?;

    for _ in 0..3 {
        if let Some(msg) = temps.next().await {
            let unit = msg.headers.get("unit").unwrap_or("?");
            println!(
                "temperature on {}: {} {unit}",
                msg.subject,
                String::from_utf8_lossy(&msg.payload)
            );
        }
    }

    // The three readings were split between the two archivers.
    let mut archived = (0, 0);
    let quiet = Duration::from_millis(200);
    loop {
        tokio::select! {
            Some(_) = worker_a.next() => archived.0 += 1,
            Some(_) = worker_b.next() => archived.1 += 1,
            () = tokio::time::sleep(quiet) => break,
        }
    }
    println!(
        "archiver A took {}, archiver B took {} (3 in all)",
        archived.0, archived.1
    );

    client.close().await
}
