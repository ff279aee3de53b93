//! How received messages are printed.
//!
//! `--json`: one object per line, `{"subject", "reply_to" (omitted when none),
//! "headers", "payload"}`. A header that occurs once is a string; one that repeats is an
//! array of its values in order. A payload that is not UTF-8 is given as
//! `"payload_base64"` instead of `"payload"`.

use std::io::{self, Write};

use base64::Engine;
use serde_json::{Map, Value};
use tern_client::{Headers, Message};

pub struct Printer {
    json: bool,
}

impl Printer {
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    pub fn print(&mut self, out: &mut impl Write, n: u64, msg: &Message) -> io::Result<()> {
        self.print_with(out, n, msg, &[])
    }

    /// Prints a message with extra fields (a delivery's count, say): added to the JSON
    /// object, or to the first line of the human form.
    pub fn print_with(
        &mut self,
        out: &mut impl Write,
        n: u64,
        msg: &Message,
        extra: &[(&str, Value)],
    ) -> io::Result<()> {
        if self.json {
            let mut obj = to_json(msg);
            for (k, v) in extra {
                obj.insert((*k).to_string(), v.clone());
            }
            let line = serde_json::to_string(&Value::Object(obj))?;
            writeln!(out, "{line}")
        } else {
            print_human(out, n, msg, extra)
        }
    }
}

/// The JSON object for a message.
pub fn to_json(msg: &Message) -> Map<String, Value> {
    let mut obj = Map::new();
    obj.insert("subject".into(), Value::from(&*msg.subject));
    if let Some(r) = &msg.reply_to {
        obj.insert("reply_to".into(), Value::from(&**r));
    }
    obj.insert("headers".into(), Value::Object(headers_json(&msg.headers)));
    match std::str::from_utf8(&msg.payload) {
        Ok(text) => obj.insert("payload".into(), Value::from(text)),
        Err(_) => obj.insert(
            "payload_base64".into(),
            Value::from(base64::engine::general_purpose::STANDARD.encode(&msg.payload)),
        ),
    };
    obj
}

fn headers_json(headers: &Headers) -> Map<String, Value> {
    let mut map = Map::new();
    for (k, v) in headers.iter() {
        match map.get_mut(k) {
            None => {
                map.insert(k.to_string(), Value::from(v));
            }
            Some(Value::Array(values)) => values.push(Value::from(v)),
            Some(first) => {
                let first = first.take();
                map.insert(k.to_string(), Value::Array(vec![first, Value::from(v)]));
            }
        }
    }
    map
}

fn print_human(
    out: &mut impl Write,
    n: u64,
    msg: &Message,
    extra: &[(&str, Value)],
) -> io::Result<()> {
    write!(out, "[#{n}] {}", msg.subject)?;
    if let Some(r) = &msg.reply_to {
        write!(out, " (reply to {r})")?;
    }
    for (k, v) in extra {
        write!(out, " {k}={v}")?;
    }
    writeln!(out)?;
    for (k, v) in msg.headers.iter() {
        writeln!(out, "{k}: {v}")?;
    }
    match std::str::from_utf8(&msg.payload) {
        Ok(text) => writeln!(out, "{text}")?,
        Err(_) => writeln!(
            out,
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&msg.payload)
        )?,
    }
    writeln!(out)
}
