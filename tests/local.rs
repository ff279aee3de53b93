//! In-process connections: the broker's own components (the MQTT bridge) use the
//! ordinary client over an in-memory pipe.

mod common;

use common::{start_broker, within};
use tern::Client;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_client_talks_to_tcp_clients() {
    let b = start_broker().await;
    let server = b.server.clone();
    let local = Client::builder()
        .name("local")
        .connect_with("local", move || {
            let pipe = server.connect_local();
            async move { Ok(pipe) }
        })
        .await
        .unwrap();
    let tcp = Client::connect(b.url()).await.unwrap();

    let mut from_local = tcp.subscribe("from.local").await.unwrap();
    let mut from_tcp = local.subscribe("from.tcp").await.unwrap();
    local.publish("from.local", "hi tcp").await.unwrap();
    tcp.publish("from.tcp", "hi local").await.unwrap();
    assert_eq!(
        &within("to tcp", from_local.next()).await.unwrap().payload[..],
        b"hi tcp"
    );
    assert_eq!(
        &within("to local", from_tcp.next()).await.unwrap().payload[..],
        b"hi local"
    );
    let peers: Vec<String> = b.server.connections().into_iter().map(|c| c.peer).collect();
    assert!(peers.contains(&"local".to_string()), "{peers:?}");
    local.close().await.unwrap();
    tcp.close().await.unwrap();
}
