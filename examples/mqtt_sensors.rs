//! IoT sensors over MQTT, an application on tern: 100 simulated sensor nodes publish
//! temperature readings to an MQTT broker; tern's MQTT bridge imports them; a tern
//! application raises an alert when a reading is above 30 °C and sends a command back
//! to one device over the bridge's export path.
//!
//! ```text
//! cargo run --example mqtt_sensors
//! ```
//!
//! Everything runs in this one process, on loopback ports chosen at start: an MQTT
//! broker (rumqttd), a tern broker whose bridge is configured from the TOML below (as
//! `ternd.toml` would configure it), the sensors (rumqttc clients) and the application
//! (the tern client). With a real deployment the bridge section goes into `ternd.toml`
//! with `url` pointing at your MQTT broker (Mosquitto, say), and the application
//! connects to ternd:
//!
//! ```toml
//! [[bridge.mqtt]]
//! name = "site-a"
//! url = "mqtt://127.0.0.1:1883"
//!   [[bridge.mqtt.import]]
//!   mqtt = "sensors/+/temperature"
//!   tern = "sensors.*.temperature"
//!   qos = 1
//!   [[bridge.mqtt.export]]
//!   tern = "commands.>"
//!   mqtt = "commands/#"
//!   qos = 1
//! ```

#[path = "../tests/common/mqtt.rs"]
mod embedded_mqtt;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use tern::{Client, Qos};
use tern_broker::config::Listen;
use tern_broker::{Config, Server, Settings};

const SENSORS: usize = 100;
const READINGS: usize = 10;
const THRESHOLD: f64 = 30.0;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. An MQTT broker, as the sensors' site would have.
    let mqtt = embedded_mqtt::start(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    println!("MQTT broker on {mqtt}");

    // 2. A tern broker with a bridge to it.
    let data = tempfile::tempdir()?;
    let settings = Settings::from_toml(&format!(
        r#"
        [[bridge.mqtt]]
        name = "site-a"
        url = "mqtt://{mqtt}"
          [[bridge.mqtt.import]]
          mqtt = "sensors/+/temperature"
          tern = "sensors.*.temperature"
          qos = 1
          [[bridge.mqtt.export]]
          tern = "commands.>"
          mqtt = "commands/#"
          qos = 1
        "#
    ))?;
    let config = Config {
        listen: Listen::On(SocketAddr::from(([127, 0, 0, 1], 0))),
        data_dir: data.path().to_owned(),
        metrics_listen: Listen::Off,
        bridges: tern_broker::config::bridge::validate(settings.bridge.unwrap_or_default())?,
        ..Config::default()
    };
    let running = Server::start(config).await?;
    ternd::bridge::start(running.server());
    let tern_addr = running.addr().ok_or("no plaintext listener")?;
    let server = running.server().clone();
    println!("tern broker on {tern_addr}, bridged to mqtt://{mqtt}");

    // 3. The application: every reading (to count them), and the hot ones.
    let app = Client::builder()
        .name("mqtt-sensors-app")
        .connect(tern_addr.to_string())
        .await?;
    let mut readings = app.subscribe("sensors.*.temperature").await?;
    // The broker evaluates the filter on the JSON payload: only hot readings arrive.
    let mut alerts = app
        .subscribe("sensors.*.temperature")
        .filter(&format!("payload.temp > {THRESHOLD}"))
        .await?;
    wait_for_bridge(&server).await?;

    // 4. The sensors: each listens for its commands and publishes its readings.
    let (commands_tx, mut commands) = tokio::sync::mpsc::unbounded_channel();
    let mut sensors = Vec::with_capacity(SENSORS);
    for i in 0..SENSORS {
        let id = format!("sensor-{i:03}");
        let (client, mut eventloop) = AsyncClient::new(
            MqttOptions::new(id.clone(), mqtt.ip().to_string(), mqtt.port()),
            64,
        );
        client
            .subscribe(format!("commands/{id}/#"), QoS::AtLeastOnce)
            .await?;
        let commands_tx = commands_tx.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = commands_tx
                            .send((p.topic, String::from_utf8_lossy(&p.payload).into_owned()));
                    }
                    Ok(_) => {}
                    // The sensor is gone: rumqttc would reconnect only to report it again.
                    Err(ConnectionError::RequestsDone) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        sensors.push((id, client));
    }
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..READINGS {
        for (i, (id, client)) in sensors.iter().enumerate() {
            // Sensor 42 runs hot from its fourth reading on; the others stay between 15
            // and 29.5 °C.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let noise = (seed % 1000) as f64 / 1000.0;
            let temp = if i == 42 && round >= 3 {
                31.0 + noise * 4.0
            } else {
                15.0 + noise * 14.5
            };
            let payload = format!("{{\"sensor\":\"{id}\",\"temp\":{temp:.1}}}");
            client
                .publish(
                    format!("sensors/{id}/temperature"),
                    QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // 5. Alerts; the first device to overheat is told to switch its fan on.
    let mut alerted = HashSet::new();
    let mut counted = 0usize;
    let mut per_sensor: HashMap<String, usize> = HashMap::new();
    let mut commanded = None;
    let mut acknowledged = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while counted < SENSORS * READINGS || commanded.is_none() || !acknowledged {
        tokio::select! {
            Some(m) = readings.next() => {
                counted += 1;
                *per_sensor.entry(m.subject.to_string()).or_default() += 1;
            }
            Some(m) = alerts.next() => {
                let reading: serde_json::Value = serde_json::from_slice(&m.payload)?;
                let temp = reading["temp"].as_f64().unwrap_or(0.0);
                let sensor = reading["sensor"].as_str().unwrap_or("?").to_string();
                if temp <= THRESHOLD {
                    return Err(format!("the filter let a reading of {temp} °C through").into());
                }
                if alerted.insert(sensor.clone()) {
                    println!(
                        "ALERT {sensor}: {temp:.1} °C (MQTT topic {}, bridged by {})",
                        m.headers.get("mqtt_topic").unwrap_or("?"),
                        m.headers.get("bridge").unwrap_or("?"),
                    );
                }
                if commanded.is_none() {
                    // QoS 1: confirmed once it is durable in the bridge's export queue.
                    app.publish(&format!("commands.{sensor}.fan"), "on")
                        .qos(Qos::AtLeastOnce)
                        .await?;
                    println!("sent command 'fan on' to {sensor}");
                    commanded = Some(sensor);
                }
            }
            Some((topic, payload)) = commands.recv() => {
                println!("device received '{payload}' on MQTT topic {topic}");
                acknowledged = true;
            }
            () = tokio::time::sleep_until(deadline) => {
                return Err("timed out waiting for readings or the command".into());
            }
        }
    }
    println!(
        "{counted} readings from {} sensors through the bridge; {} sensor(s) over {THRESHOLD} °C: {:?}",
        per_sensor.len(),
        alerted.len(),
        alerted
    );

    running.stop().await?;
    Ok(())
}

/// Waits until the bridge reports its MQTT connection up.
async fn wait_for_bridge(server: &Server) -> Result<(), Box<dyn std::error::Error>> {
    for _ in 0..500 {
        if server
            .metrics_text()
            .await
            .contains("tern_bridge_connected{bridge=\"site-a\"} 1")
        {
            // The bridge subscribes right after connecting; give the SUBACK a moment.
            tokio::time::sleep(Duration::from_millis(100)).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err("the bridge did not connect".into())
}
