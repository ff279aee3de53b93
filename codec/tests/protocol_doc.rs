//! Keeps `codec/PROTOCOL.md` honest: its worked example, its frame examples, its error
//! code table and its frame type table are checked against the codec, so the
//! specification cannot drift from the code.

use std::path::Path;

use tern_codec::codes::{ERROR_CODES, FRAME_TYPES};
use tern_codec::{BytesMut, Frame, DEFAULT_MAX_FRAME_SIZE};

fn spec() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The text of the section whose heading starts with `heading`, up to the next `## `.
fn section<'a>(spec: &'a str, heading: &str) -> &'a str {
    let start = spec
        .find(heading)
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let rest = &spec[start + heading.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    &rest[..end]
}

fn hex_byte(token: &str) -> Option<u8> {
    if token.len() == 2 {
        u8::from_str_radix(token, 16).ok()
    } else {
        None
    }
}

/// The leading run of two-digit hex tokens of a line.
fn leading_hex(line: &str) -> Vec<u8> {
    line.split_whitespace().map_while(hex_byte).collect()
}

/// Every byte the worked example shows, in order: the hex at the start of each line of
/// its code blocks, and inline code spans made only of hex bytes.
fn worked_example_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            bytes.extend(leading_hex(line));
            continue;
        }
        for (i, span) in line.split('`').enumerate() {
            let tokens: Vec<&str> = span.split_whitespace().collect();
            // Odd pieces are inside backticks.
            if i % 2 == 1 && tokens.len() >= 5 && tokens.iter().all(|t| hex_byte(t).is_some()) {
                bytes.extend(tokens.iter().filter_map(|t| hex_byte(t)));
            }
        }
    }
    bytes
}

#[test]
fn worked_example_is_the_golden_conversation() {
    let spec = spec();
    let shown = worked_example_bytes(section(&spec, "## 15. Worked example"));
    let golden = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode/conversation"),
    )
    .unwrap();
    assert_eq!(
        shown, golden,
        "PROTOCOL.md section 15 differs from the golden frames"
    );

    // And it decodes, whole, into thirteen frames.
    let mut buf = BytesMut::from(&shown[..]);
    let mut n = 0;
    while let Some(_frame) = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_SIZE).unwrap() {
        n += 1;
    }
    assert!(buf.is_empty());
    assert_eq!(n, 13);
}

#[test]
fn error_code_table_matches_the_codec() {
    let spec = spec();
    let table = section(&spec, "## 13. Error codes");
    let mut documented: Vec<(u16, String)> = Vec::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 {
            if let Ok(code) = cells[1].parse::<u16>() {
                documented.push((code, cells[2].trim_matches('`').to_owned()));
            }
        }
    }
    let codec: Vec<(u16, String)> = ERROR_CODES
        .iter()
        .map(|(c, name)| (*c as u16, (*name).to_owned()))
        .collect();
    assert_eq!(
        documented, codec,
        "PROTOCOL.md section 13 vs codes.rs ERROR_CODES"
    );
}

#[test]
fn frame_type_table_matches_the_codec() {
    let spec = spec();
    let table = section(&spec, "## 3. Frame types");
    let mut documented: Vec<(u8, String)> = Vec::new();
    for line in table.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() > 3 {
            let code = cells[1].trim_matches('`');
            if let Some(hex) = code.strip_prefix("0x").filter(|h| h.len() == 2) {
                let name = cells[2];
                let is_name = |c: char| c.is_ascii_uppercase() || c == '_';
                if !name.is_empty() && name.chars().all(is_name) {
                    documented.push((u8::from_str_radix(hex, 16).unwrap(), name.to_owned()));
                }
            }
        }
    }
    let codec: Vec<(u8, String)> = FRAME_TYPES
        .iter()
        .map(|(t, name)| (*t as u8, (*name).to_owned()))
        .collect();
    assert_eq!(
        documented, codec,
        "PROTOCOL.md section 3 vs codes.rs FRAME_TYPES"
    );
}

/// Marks a frame example in section 6: `<!-- golden: NAME -->`, then (after some prose)
/// a code block whose leading hex bytes are the fuzz seed `golden_NAME`, which the unit
/// tests keep equal to the golden constant.
const GOLDEN_MARK: &str = "<!-- golden: ";

#[test]
fn frame_examples_are_the_golden_frames() {
    let spec = spec();
    let frames = section(&spec, "## 6. Frames");
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut checked = Vec::new();
    for (at, _) in frames.match_indices(GOLDEN_MARK) {
        let rest = &frames[at + GOLDEN_MARK.len()..];
        let name = &rest[..rest.find(" -->").expect("unterminated golden mark")];
        // The first code block after the mark.
        let open = rest
            .find("```text\n")
            .expect("no code block after a golden mark");
        let block = &rest[open + "```text\n".len()..];
        let block = &block[..block.find("```").expect("unterminated code block")];
        let shown: Vec<u8> = block.lines().flat_map(leading_hex).collect();
        let path = corpus.join(format!("golden_{name}"));
        let golden = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            shown,
            golden,
            "PROTOCOL.md example {name:?} vs {}",
            path.display()
        );
        // The prose above the block states the frame's size.
        let prose = &rest[..open];
        assert!(
            prose.contains(&format!("({} bytes)", golden.len())),
            "PROTOCOL.md example {name:?} does not say it is {} bytes",
            golden.len()
        );
        let mut buf = BytesMut::from(&shown[..]);
        let frame = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_SIZE)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty());
        checked.push(frame.frame_type().name());
    }
    assert_eq!(
        checked,
        [
            "PUBLISH",
            "CONFIRM",
            "DELIVERY",
            "NACK",
            "QUEUE_DECLARE",
            "QUEUE_INFO",
            "SERVER_QUERY",
            "SERVER_INFO",
            "CREDIT",
            "CLUSTER_QUERY",
            "CLUSTER_INFO",
            "CLUSTER_CHANGE",
            "GROUPS_QUERY",
            "GROUPS_INFO",
            "QUEUE_CREATE",
        ]
    );
}

/// Every frame type and error code the codec knows is mentioned outside the tables
/// too: a new one cannot be added to the tables alone.
#[test]
fn every_frame_type_has_a_section() {
    let spec = spec();
    let frames = section(&spec, "## 6. Frames");
    for (t, name) in FRAME_TYPES {
        let code = format!("(`0x{:02x}`)", *t as u8);
        let heading = frames
            .lines()
            .filter(|l| l.starts_with("### "))
            .any(|l| l.contains(name) && l.contains(&code));
        assert!(
            heading,
            "PROTOCOL.md section 6 has no heading for {name} {code}"
        );
    }
}
