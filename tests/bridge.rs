//! The MQTT bridge end to end: an embedded MQTT broker (rumqttd) in this process,
//! simulated sensors and devices (rumqttc clients), and a tern broker whose bridge is
//! configured from TOML exactly as `ternd.toml` would configure it.
//!
//! Two kinds of outage: a network one (a TCP proxy between the bridge and the MQTT
//! broker refuses and cuts connections, and the broker keeps the bridge's persistent
//! session), and a real restart (the MQTT broker runs as a child process, is killed
//! with SIGKILL and started again on the same port, having forgotten every session and
//! subscription).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{eventually, start_broker_with, wait_for, within, Proc, Proxy, TestBroker, PATIENCE};
use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS};
use tern::{Client, Qos};
use tern_broker::bridge::mapping::{mqtt_to_subject, subject_to_mqtt};
use tern_broker::{Config, Server, Settings};
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------
// The MQTT side.
// ---------------------------------------------------------------------------------------

/// A device or sensor: an MQTT client whose event loop runs in a task, passing on the
/// messages it receives.
struct Device {
    client: AsyncClient,
    messages: mpsc::UnboundedReceiver<rumqttc::Publish>,
    subacks: mpsc::UnboundedReceiver<()>,
}

impl Device {
    async fn connect(addr: SocketAddr, id: &str) -> Device {
        let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        options.set_keep_alive(30);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let (tx, messages) = mpsc::unbounded_channel();
        let (sub_tx, subacks) = mpsc::unbounded_channel();
        let (up_tx, mut up) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send(p).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = up_tx.send(());
                    }
                    Ok(_) => {}
                    // Every client handle dropped: rumqttc would reconnect only to
                    // report it again.
                    Err(ConnectionError::RequestsDone) => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        });
        within("the device to connect", up.recv()).await.unwrap();
        Device {
            client,
            messages,
            subacks,
        }
    }

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        within("the SUBACK", self.subacks.recv()).await.unwrap();
    }

    async fn publish(&self, topic: &str, qos: QoS, payload: &str) {
        self.client
            .publish(topic, qos, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    /// The next message, failing the test after [`PATIENCE`].
    async fn next(&mut self) -> rumqttc::Publish {
        within("an MQTT message", self.messages.recv())
            .await
            .unwrap()
    }

    /// The next message, waiting as long as it takes (for use under a timeout).
    async fn next_any(&mut self) -> Option<rumqttc::Publish> {
        self.messages.recv().await
    }
}

/// An MQTT broker in this process, on a free loopback port.
fn mqtt_broker() -> SocketAddr {
    common::mqtt::start(SocketAddr::from(([127, 0, 0, 1], 0))).expect("an MQTT broker")
}

/// An MQTT broker in a child process (`examples/mqtt_broker.rs`), so that it can be
/// killed and started again on the same port.
struct MqttProcess {
    addr: SocketAddr,
    proc: Option<Proc>,
}

impl MqttProcess {
    /// Starts the broker on a free loopback port.
    async fn start() -> MqttProcess {
        let mut broker = MqttProcess {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            proc: None,
        };
        broker.restart().await;
        broker
    }

    /// Starts the broker on its address (again), waits until it listens and takes the
    /// address it prints (the port it found, the first time).
    async fn restart(&mut self) {
        use std::io::BufRead;
        let mut cmd = std::process::Command::new(common::example("mqtt_broker"));
        cmd.arg(self.addr.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd);
        let stdout = proc.child.stdout.take().unwrap();
        let (tx, listening) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let first = std::io::BufReader::new(stdout).lines().next();
            let _ = tx.send(first);
        });
        let line = within("the MQTT broker to start", listening).await;
        let addr = match &line {
            Ok(Some(Ok(l))) => l.split_once("listening on ").map(|(_, a)| a.parse()),
            _ => None,
        };
        let Some(Ok(addr)) = addr else {
            panic!("the MQTT broker did not start: {line:?}");
        };
        self.addr = addr;
        self.proc = Some(proc);
    }

    /// SIGKILL; waits until the process is gone.
    async fn kill9(&mut self) {
        let mut proc = self.proc.take().expect("running");
        proc.child.kill().unwrap();
        proc.wait().await;
    }
}

// ---------------------------------------------------------------------------------------
// The tern side.
// ---------------------------------------------------------------------------------------

/// `[[bridge.mqtt]]` tables as a ternd.toml holds them, through the real config path.
fn bridges(toml: &str) -> Vec<tern_broker::config::bridge::MqttBridge> {
    let settings = Settings::from_toml(toml).unwrap_or_else(|e| panic!("{e}"));
    tern_broker::config::bridge::validate(settings.bridge.unwrap_or_default()).unwrap()
}

/// A tern broker running the bridges of `toml`.
async fn start_with_bridges(toml: &str) -> TestBroker {
    let bridges = bridges(toml);
    let b = start_broker_with(move |c: &mut Config| c.bridges = bridges).await;
    ternd::bridge::start(&b.server);
    b
}

/// The value of metric `line_prefix` (name and labels) in the broker's exposition.
async fn metric(server: &Server, line_prefix: &str) -> Option<f64> {
    let text = server.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_connected(server: &Server, bridge: &str, connected: bool) {
    let line = format!("tern_bridge_connected{{bridge=\"{bridge}\"}}");
    let want = if connected { 1.0 } else { 0.0 };
    eventually(&format!("{line} = {want}"), || async {
        (metric(server, &line).await == Some(want)).then_some(())
    })
    .await;
}

async fn tern_client(b: &TestBroker) -> Client {
    Client::connect(b.url()).await.unwrap()
}

/// Waits until the bridge's export queue exists (the bridge declares it as it starts):
/// only then does a tern publish route to it.
async fn wait_export_queue(client: &Client, queue: &str) {
    eventually(&format!("export queue {queue}"), || async {
        client.queue_info(queue).await.ok().map(|_| ())
    })
    .await;
}

/// Publishes QoS 1 probes from `device` on `topic` until `sub` sees one: then the
/// bridge's MQTT subscription is in place. Returns nothing; the probes are drained.
async fn probe_import(device: &Device, topic: &str, sub: &mut tern::Subscription) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        device.publish(topic, QoS::AtLeastOnce, "probe").await;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for the bridge's MQTT subscription"
        );
    }
    // Later probes may still be on their way: drain until quiet.
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {}
}

/// Logs to the test's output when `RUST_LOG` asks for them.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn text(payload: &[u8]) -> String {
    String::from_utf8(payload.to_vec()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensor_readings_arrive_on_mapped_subjects_with_headers() {
    logs();
    let mqtt = mqtt_broker();
    let b = start_with_bridges(&format!(
        r#"
        [[bridge.mqtt]]
        name = "site-a"
        url = "mqtt://{mqtt}"
        keep_alive = "30s"
          [[bridge.mqtt.import]]
          mqtt = "sensors/+/temperature"
          tern = "sensors.*.temperature"
          qos = 1
          [[bridge.mqtt.import]]
          mqtt = "sensors/+/battery"
          tern = "power.*"
          qos = 0
        "#
    ))
    .await;
    wait_connected(&b.server, "site-a", true).await;
    let app = tern_client(&b).await;
    let mut sub = app.subscribe("sensors.*.temperature").await.unwrap();
    let mut power = app.subscribe("power.*").await.unwrap();
    let sensor = Device::connect(mqtt, "sensor-kitchen").await;
    probe_import(&sensor, "sensors/probe/temperature", &mut sub).await;

    sensor
        .publish("sensors/kitchen/temperature", QoS::AtMostOnce, "21.5")
        .await;
    sensor
        .publish("sensors/kitchen/temperature", QoS::AtLeastOnce, "21.7")
        .await;
    // Not imported: no import matches.
    sensor
        .publish("sensors/kitchen/humidity", QoS::AtLeastOnce, "40")
        .await;
    for payload in ["21.5", "21.7"] {
        let m = within("an imported reading", sub.next()).await.unwrap();
        assert_eq!(m.subject, "sensors.kitchen.temperature");
        assert_eq!(text(&m.payload), payload);
        assert_eq!(
            m.headers.get("mqtt_topic"),
            Some("sensors/kitchen/temperature")
        );
        // The QoS the bridge received it at. rumqttd delivers at the subscription's
        // QoS (1 here) even what was published at QoS 0.
        assert_eq!(m.headers.get("mqtt_qos"), Some("1"));
        assert_eq!(m.headers.get("mqtt_retain"), Some("false"));
        assert_eq!(m.headers.get("bridge"), Some("site-a"));
    }
    // A QoS 0 import (subscribed at QoS 0), with a renamed subject. QoS 0 may be lost
    // before the subscription is in place: retry until one arrives.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let m = loop {
        sensor
            .publish("sensors/kitchen/battery", QoS::AtMostOnce, "87")
            .await;
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), power.next()).await {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no QoS 0 reading arrived"
        );
    };
    assert_eq!(m.subject, "power.kitchen");
    assert_eq!(text(&m.payload), "87");
    assert_eq!(m.headers.get("mqtt_topic"), Some("sensors/kitchen/battery"));
    assert_eq!(m.headers.get("mqtt_qos"), Some("0"));
    let line = "tern_bridge_messages_total{bridge=\"site-a\",direction=\"in\"}";
    assert!(
        metric(&b.server, line).await.unwrap_or(0.0) >= 3.0,
        "probe + 2 readings"
    );
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_commands_reach_mqtt_devices() {
    logs();
    let mqtt = mqtt_broker();
    let b = start_with_bridges(&format!(
        r#"
        [[bridge.mqtt]]
        name = "site-a"
        url = "mqtt://{mqtt}"
          [[bridge.mqtt.export]]
          tern = "commands.>"
          mqtt = "commands/#"
          qos = 1
          [[bridge.mqtt.export]]
          tern = "notices.*"
          qos = 0
        "#
    ))
    .await;
    let mut device = Device::connect(mqtt, "dev7").await;
    device.subscribe("commands/#").await;
    device.subscribe("notices/+").await;
    let app = tern_client(&b).await;
    wait_export_queue(&app, "bridge.site-a.export.0").await;

    // Published before the bridge is even connected: the queue keeps it.
    app.publish("commands.dev7.reboot", "now")
        .qos(Qos::AtLeastOnce)
        .await
        .unwrap();
    let m = device.next().await;
    assert_eq!(m.topic, "commands/dev7/reboot");
    assert_eq!(text(&m.payload), "now");
    assert_eq!(m.qos, QoS::AtLeastOnce);
    wait_connected(&b.server, "site-a", true).await;

    // QoS 0 exports go out while connected.
    // (QoS 0 is lost while the bridge's subscription is still being made: retry.)
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        app.publish("notices.all", "hello").await.unwrap();
        if let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(200), device.next_any()).await
        {
            assert_eq!(m.topic, "notices/all");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no QoS 0 notice arrived"
        );
    }
    // The QoS 1 export was acked only after the MQTT broker's PUBACK: the queue is empty.
    eventually("the export acked", || async {
        let s = app
            .queue_info("bridge.site-a.export.0")
            .await
            .unwrap()
            .stats;
        (s.ready == 0 && s.unacked == 0 && s.acked >= 1).then_some(())
    })
    .await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_messages_are_not_echoed_back() {
    logs();
    let mqtt = mqtt_broker();
    let b = start_with_bridges(&format!(
        r#"
        [[bridge.mqtt]]
        name = "loop"
        url = "mqtt://{mqtt}"
          [[bridge.mqtt.import]]
          mqtt = "x/#"
          [[bridge.mqtt.export]]
          tern = "x.>"
        "#
    ))
    .await;
    let app = tern_client(&b).await;
    let mut tern_side = app.subscribe("x.>").await.unwrap();
    let mut mqtt_side = Device::connect(mqtt, "observer").await;
    mqtt_side.subscribe("x/#").await;
    let sensor = Device::connect(mqtt, "sensor").await;
    wait_export_queue(&app, "bridge.loop.export.0").await;
    wait_connected(&b.server, "loop", true).await;
    probe_import(&sensor, "x/probe", &mut tern_side).await;
    // The probes also reach the observer (topic x/probe): the counts below leave them out.

    sensor.publish("x/from-mqtt", QoS::AtLeastOnce, "m").await;
    app.publish("x.from-tern", "t")
        .qos(Qos::AtLeastOnce)
        .await
        .unwrap();

    // Markers sent after the observed messages come through the same ordered paths;
    // once both arrived, a loop or an echo would have shown up before them.
    let mut tern_seen = Vec::new();
    let mut mqtt_seen = Vec::new();
    let mut mqtt_marker_sent = false;
    let mut tern_marker_sent = false;
    while !(tern_seen.contains(&"x.marker-from-mqtt".to_string())
        && mqtt_seen.contains(&"x/marker-from-tern".to_string()))
    {
        tokio::select! {
            m = tern_side.next() => {
                let m = m.unwrap();
                tern_seen.push(m.subject.to_string());
            }
            m = mqtt_side.messages.recv() => {
                mqtt_seen.push(m.unwrap().topic);
            }
            () = tokio::time::sleep(PATIENCE) => panic!("markers did not arrive: tern {tern_seen:?}, mqtt {mqtt_seen:?}"),
        }
        if !mqtt_marker_sent && mqtt_seen.contains(&"x/from-tern".to_string()) {
            mqtt_marker_sent = true;
            sensor
                .publish("x/marker-from-mqtt", QoS::AtLeastOnce, "k")
                .await;
        }
        if !tern_marker_sent && tern_seen.contains(&"x.from-mqtt".to_string()) {
            tern_marker_sent = true;
            app.publish("x.marker-from-tern", "k")
                .qos(Qos::AtLeastOnce)
                .await
                .unwrap();
        }
    }
    let count = |seen: &[String], what: &str| seen.iter().filter(|s| *s == what).count();
    assert_eq!(count(&tern_seen, "x.from-mqtt"), 1, "tern: {tern_seen:?}");
    assert_eq!(
        count(&tern_seen, "x.from-tern"),
        1,
        "tern (no echo): {tern_seen:?}"
    );
    assert_eq!(
        count(&mqtt_seen, "x/from-mqtt"),
        1,
        "mqtt (no re-export): {mqtt_seen:?}"
    );
    assert_eq!(count(&mqtt_seen, "x/from-tern"), 1, "mqtt: {mqtt_seen:?}");
    b.shutdown().await;
}

/// The phases of an outage test.
const PHASES: [&str; 3] = ["before", "during", "after"];

/// Takes payloads from `next` until every payload of `phases` has come. QoS 1 is at
/// least once, so repeats (and probes) are fine; anything else fails the test.
async fn expect_phases(what: &str, phases: &[&str], mut next: impl AsyncFnMut() -> String) {
    let payloads = |phases: &[&str]| -> BTreeSet<String> {
        phases
            .iter()
            .flat_map(|p| (0..5).map(move |i| format!("{p}-{i}")))
            .collect()
    };
    let want = payloads(phases);
    let known = payloads(&PHASES);
    let mut got = BTreeSet::new();
    while !want.is_subset(&got) {
        let payload = within(what, next()).await;
        assert!(
            payload == "probe" || known.contains(&payload),
            "{what}: unexpected {payload:?}"
        );
        got.insert(payload);
    }
}

/// What an outage test runs: a tern broker whose bridge imports `sensors/#` and
/// exports `commands.>` (both QoS 1, persistent session, quick reconnects), the
/// application subscribed to the readings, a device subscribed to the commands and a
/// sensor, all connected and the bridge's subscription in place.
struct Outage {
    b: TestBroker,
    app: Client,
    readings: tern::Subscription,
    device: Device,
    sensor: Device,
}

impl Outage {
    /// The bridge reaches the MQTT broker at `bridge_to`, the device at `device_to`,
    /// the sensor at `sensor_to` (the broker, or proxies in front of it).
    async fn start(bridge_to: SocketAddr, device_to: SocketAddr, sensor_to: SocketAddr) -> Outage {
        let b = start_with_bridges(&format!(
            r#"
            [[bridge.mqtt]]
            name = "site-a"
            url = "mqtt://{bridge_to}"
            client_id = "tern-outage-test"
            clean_session = false
            reconnect_delay_min = "20ms"
            reconnect_delay_max = "200ms"
              [[bridge.mqtt.import]]
              mqtt = "sensors/#"
              qos = 1
              [[bridge.mqtt.export]]
              tern = "commands.>"
              qos = 1
            "#
        ))
        .await;
        let app = tern_client(&b).await;
        let mut readings = app.subscribe("sensors.>").await.unwrap();
        let mut device = Device::connect(device_to, "device").await;
        device.subscribe("commands/#").await;
        let sensor = Device::connect(sensor_to, "sensor").await;
        wait_export_queue(&app, "bridge.site-a.export.0").await;
        wait_connected(&b.server, "site-a", true).await;
        probe_import(&sensor, "sensors/probe", &mut readings).await;
        Outage {
            b,
            app,
            readings,
            device,
            sensor,
        }
    }

    /// One phase: five QoS 1 readings from the sensor (`sensors/sI`) and five QoS 1
    /// commands from the application (`commands.dI`), with payloads `PHASE-I`. A
    /// reading is handed to the sensor's MQTT client, which sends it once connected.
    async fn send_phase(&self, phase: &str) {
        for i in 0..5 {
            let payload = format!("{phase}-{i}");
            self.sensor
                .publish(&format!("sensors/s{i}"), QoS::AtLeastOnce, &payload)
                .await;
            self.app
                .publish(&format!("commands.d{i}"), payload)
                .qos(Qos::AtLeastOnce)
                .await
                .unwrap();
        }
    }

    /// Every reading and command of `phases` arrives.
    async fn expect(&mut self, phases: &[&str]) {
        let readings = &mut self.readings;
        expect_phases("imported readings", phases, async || {
            text(&readings.next().await.unwrap().payload)
        })
        .await;
        let device = &mut self.device;
        expect_phases("exported commands", phases, async || {
            text(&device.next_any().await.unwrap().payload)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_reconnects_and_nothing_sent_around_an_outage_is_lost() {
    logs();
    let mqtt = mqtt_broker();
    // The network between the bridge and the MQTT broker.
    let network = Proxy::start(mqtt).await;
    let mut t = Outage::start(network.addr, mqtt, mqtt).await;
    t.send_phase("before").await;

    // The MQTT broker goes away (for the bridge): connections are cut and refused. It
    // keeps the bridge's session, queueing the readings for it.
    network.refuse(true);
    network.cut();
    wait_connected(&t.b.server, "site-a", false).await;
    t.send_phase("during").await;
    // Refused attempts are retried with back-off.
    let attempts = network.accepted();
    wait_for("reconnect attempts", || network.accepted() >= attempts + 3).await;

    network.refuse(false);
    wait_connected(&t.b.server, "site-a", true).await;
    let reconnects = "tern_bridge_reconnects_total{bridge=\"site-a\"}";
    assert!(metric(&t.b.server, reconnects).await.unwrap_or(0.0) >= 1.0);
    t.send_phase("after").await;

    t.expect(&PHASES).await;
    t.b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_mqtt_broker_gets_its_subscriptions_back_and_nothing_is_lost() {
    logs();
    let mut mqtt = MqttProcess::start().await;
    // The bridge's and the sensor's networks. A restarted MQTT broker drops what it
    // receives before somebody subscribes again, as MQTT brokers without a session do;
    // these keep the bridge and the sensor away until the device has subscribed again.
    let bridge_net = Proxy::start(mqtt.addr).await;
    let sensor_net = Proxy::start(mqtt.addr).await;
    let mut t = Outage::start(bridge_net.addr, mqtt.addr, sensor_net.addr).await;
    t.send_phase("before").await;
    t.expect(&["before"]).await;

    bridge_net.refuse(true);
    sensor_net.refuse(true);
    mqtt.kill9().await;
    wait_connected(&t.b.server, "site-a", false).await;
    // Readings wait in the sensor's MQTT client; commands in the bridge's export queue.
    t.send_phase("during").await;

    mqtt.restart().await;
    // The device's client reconnects by itself; its subscription is gone with the
    // broker's memory, so it subscribes again (the request waits for the connection).
    t.device.subscribe("commands/#").await;
    bridge_net.refuse(false);
    wait_connected(&t.b.server, "site-a", true).await;
    // The bridge found no session and subscribed again: a reading from another MQTT
    // client gets through.
    let prober = Device::connect(mqtt.addr, "prober").await;
    probe_import(&prober, "sensors/probe", &mut t.readings).await;
    sensor_net.refuse(false);
    t.send_phase("after").await;

    t.expect(&["during", "after"]).await;
    t.b.shutdown().await;
}

/// Topics that need the escaping rule, and the subjects they map to.
const ODD_TOPICS: &[(&str, &str)] = &[
    ("odd/a//b", "odd.a.%.b"),
    ("odd/trailing/", "odd.trailing.%"),
    ("odd/v1.2/x", "odd.v1%2E2.x"),
    ("odd/living room/temp", "odd.living%20room.temp"),
    ("odd/50%", "odd.50%25"),
    ("odd/température/Küche/温度", "odd.température.Küche.温度"),
    ("odd/*/>", "odd.%2A.%3E"),
];

#[test]
fn the_mapping_round_trips_for_odd_topics() {
    let more = [
        ("$SYS/broker/load", "$SYS.broker.load"),
        ("/leading", "%.leading"),
        ("trailing/", "trailing.%"),
        ("a//b", "a.%.b"),
    ];
    for (topic, subject) in ODD_TOPICS.iter().chain(more.iter()) {
        assert_eq!(mqtt_to_subject(topic), *subject);
        assert_eq!(subject_to_mqtt(subject).as_deref(), Ok(*topic));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_topics_cross_the_bridge_both_ways() {
    logs();
    let mqtt = mqtt_broker();
    let b = start_with_bridges(&format!(
        r#"
        [[bridge.mqtt]]
        name = "odd"
        url = "mqtt://{mqtt}"
          [[bridge.mqtt.import]]
          mqtt = "odd/#"
          [[bridge.mqtt.import]]
          mqtt = "+/leading"
          [[bridge.mqtt.export]]
          tern = "back.>"
        "#
    ))
    .await;
    let app = tern_client(&b).await;
    let mut sub = app.subscribe(">").await.unwrap();
    let sensor = Device::connect(mqtt, "odd-sensor").await;
    let mut device = Device::connect(mqtt, "odd-device").await;
    device.subscribe("back/#").await;
    wait_export_queue(&app, "bridge.odd.export.0").await;
    wait_connected(&b.server, "odd", true).await;
    probe_import(&sensor, "odd/probe", &mut sub).await;

    // (`$SYS/...` maps like any topic, see the test above, but rumqttd refuses
    // subscriptions to `$` topics.)
    let mut table: Vec<(&str, &str)> = ODD_TOPICS.to_vec();
    table.push(("/leading", "%.leading"));
    for (topic, _) in &table {
        sensor.publish(topic, QoS::AtLeastOnce, topic).await;
    }
    for (topic, subject) in &table {
        let m = within("an odd topic", sub.next()).await.unwrap();
        assert_eq!(m.subject, *subject, "{topic}");
        assert_eq!(m.headers.get("mqtt_topic"), Some(*topic));
        assert_eq!(text(&m.payload), *topic);
    }

    // And back out: the subject's tail maps to the MQTT topic's tail.
    for (topic, subject) in &table {
        let tail = subject.split_once('.').map_or(*subject, |(_, t)| t);
        app.publish(&format!("back.{tail}"), *topic)
            .qos(Qos::AtLeastOnce)
            .await
            .unwrap();
    }
    for (topic, _) in &table {
        let m = device.next().await;
        let tail = topic.split_once('/').map_or(*topic, |(_, t)| t);
        assert_eq!(m.topic, format!("back/{tail}"));
        assert_eq!(text(&m.payload), *topic);
    }
    b.shutdown().await;
}

#[test]
fn bad_configs_name_the_bridge_and_the_key() {
    let good = r#"
        [[bridge.mqtt]]
        name = "site-a"
        url = "mqtt://127.0.0.1:1883"
          [[bridge.mqtt.import]]
          mqtt = "sensors/+/temperature"
          tern = "sensors.*.temperature"
          [[bridge.mqtt.export]]
          tern = "commands.>"
          mqtt = "commands/#"
    "#;
    let check = |toml: String, key: &str, says: &str| {
        let settings = Settings::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"));
        let err = Config::from_settings(settings).unwrap_err().to_string();
        assert!(err.contains("bridge 'site-a'"), "{key}: {err}");
        assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        assert!(err.contains(says), "{key}: {err}");
    };
    Config::from_settings(Settings::from_toml(good).unwrap()).unwrap();
    check(
        good.replace("tern = \"sensors.*.temperature\"", "tern = \"sensors.>\""),
        "import[0].tern",
        "do not correspond",
    );
    check(
        good.replace("mqtt = \"commands/#\"", "mqtt = \"commands/+\""),
        "export[0].mqtt",
        "do not correspond",
    );
    check(
        good.replace(
            "tern = \"sensors.*.temperature\"",
            "tern = \"*.sensors.temperature\"",
        ),
        "import[0].tern",
        "at the same level",
    );
    check(
        good.replace("name = \"site-a\"", "name = \"site-a\"\nkeepalive = \"5s\""),
        "keepalive",
        "unknown key",
    );
    check(
        good.replace(
            "mqtt = \"commands/#\"",
            "mqtt = \"commands/#\"\nqos_level = 1",
        ),
        "export[0].qos_level",
        "unknown key",
    );
    check(
        good.replace("mqtt://127.0.0.1:1883", "tcp://127.0.0.1:1883"),
        "url",
        "not an MQTT URL",
    );
    check(
        good.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
            .replace(
                "name = \"site-a\"",
                "name = \"site-a\"\nca_file = \"/no/such/ca.pem\"",
            ),
        "ca_file",
        "/no/such/ca.pem",
    );
    check(
        good.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883").replace(
            "name = \"site-a\"",
            "name = \"site-a\"\ncert_file = \"/no/cert.pem\"\nkey_file = \"/no/key.pem\"\nca_file = \"/no/ca.pem\"",
        ),
        "ca_file",
        "no such file",
    );
}
