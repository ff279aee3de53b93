//! A local MQTT broker (rumqttd, MQTT 3.1.1) for trying the bridge without installing
//! Mosquitto: it listens on the given address (default 127.0.0.1:1883; port 0 for a
//! free one) until killed, and prints `MQTT broker listening on ADDR` once it accepts
//! connections.
//!
//! ```text
//! cargo run --example mqtt_broker -- 127.0.0.1:1883
//! ```
//!
//! It keeps no state on disk: a restarted broker has forgotten every session and
//! subscription, which is what the bridge tests need to stop and restart a real MQTT
//! broker underneath a running bridge.

#[path = "../tests/common/mqtt.rs"]
mod embedded_mqtt;

use std::net::SocketAddr;
use std::process::ExitCode;

fn main() -> ExitCode {
    let arg = std::env::args().nth(1);
    let addr: SocketAddr = match arg.as_deref().unwrap_or("127.0.0.1:1883").parse() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!(
                "mqtt_broker: bad address {:?}: {e} (expected HOST:PORT)",
                arg.unwrap_or_default()
            );
            return ExitCode::FAILURE;
        }
    };
    match embedded_mqtt::start(addr) {
        Ok(addr) => println!("MQTT broker listening on {addr}"),
        Err(e) => {
            eprintln!("mqtt_broker: {e}");
            return ExitCode::FAILURE;
        }
    }
    loop {
        std::thread::park();
    }
}
