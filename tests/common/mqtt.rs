//! An embedded MQTT broker (rumqttd) for what needs one to bridge to: the bridge tests,
//! the `mqtt_sensors` and `mqtt_broker` examples and `tern-bench mqtt-bridge` (which
//! include this file).

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// Starts rumqttd on `addr` and returns the address once it accepts connections
/// there; its threads run until the process exits. Port 0 means a free port.
///
/// rumqttd cannot be told to bind port 0, so a free port is found by binding and
/// releasing one; if another process takes it meanwhile, another port is tried.
///
/// # Errors
///
/// The broker did not accept connections within 5 seconds (the address is taken, say),
/// or no free port was found.
pub fn start(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    if addr.port() != 0 {
        return start_on(addr).map(|()| addr);
    }
    for _ in 0..5 {
        let free = TcpListener::bind(addr)?.local_addr()?;
        if start_on(free).is_ok() {
            return Ok(free);
        }
    }
    Err(std::io::Error::other("the MQTT broker did not start"))
}

/// Starts rumqttd on `addr`, a real port, and waits until it accepts connections.
fn start_on(addr: SocketAddr) -> std::io::Result<()> {
    let config = rumqttd::Config {
        router: rumqttd::RouterConfig {
            max_connections: 1000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..Default::default()
        },
        v4: Some(HashMap::from([(
            "1".to_string(),
            rumqttd::ServerSettings {
                name: "v4-1".into(),
                listen: addr,
                tls: None,
                next_connection_delay_ms: 1,
                connections: rumqttd::ConnectionSettings {
                    connection_timeout_ms: 60_000,
                    max_payload_size: 1024 * 1024,
                    max_inflight_count: 100,
                    auth: None,
                    external_auth: None,
                    dynamic_filters: true,
                },
            },
        )])),
        ..Default::default()
    };
    std::thread::spawn(move || {
        let mut broker = rumqttd::Broker::new(config);
        if let Err(e) = broker.start() {
            eprintln!("rumqttd on {addr}: {e}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect(addr).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(std::io::Error::other(format!(
        "the MQTT broker did not start listening on {addr}"
    )))
}
