//! Names of queues and durable consumers.
//!
//! 1 to 255 bytes of ASCII letters, digits, `-`, `_` and `.`: safe in file names,
//! metric labels and command lines. Checked by the client before sending and by the
//! broker on receipt.

/// Longest queue or consumer name, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Checks a queue or durable consumer name.
///
/// # Errors
///
/// A sentence saying what is wrong with it.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "names are 1 to {MAX_NAME_LEN} bytes; '{name}' is {}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "name '{name}' contains '{c}'; use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["q", "orders.dlq", "a-b_c.9", &"x".repeat(255)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(256)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
