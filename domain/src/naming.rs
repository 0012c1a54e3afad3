//! The rules every human-chosen name follows (client, site, agent display names): trimmed, not
//! empty, at most [`MAX_NAME_LEN`] characters, no control characters.

/// Longest accepted name, in characters.
pub const MAX_NAME_LEN: usize = 200;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing but whitespace.
    #[error("must not be empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("must be at most {MAX_NAME_LEN} characters, got {0}")]
    TooLong(usize),
    /// Contains a control character such as a newline.
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Returns the normalised (trimmed) name, or why it is refused.
pub fn normalise_name(raw: &str) -> Result<String, NameError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    let len = name.chars().count();
    if len > MAX_NAME_LEN {
        return Err(NameError::TooLong(len));
    }
    if name.chars().any(char::is_control) {
        return Err(NameError::ControlCharacter);
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_checked() {
        assert_eq!(normalise_name("  Acme  "), Ok("Acme".to_string()));
        assert_eq!(normalise_name("   "), Err(NameError::Empty));
        assert_eq!(normalise_name("a\nb"), Err(NameError::ControlCharacter));
        assert_eq!(
            normalise_name(&"x".repeat(201)),
            Err(NameError::TooLong(201))
        );
        assert!(normalise_name(&"é".repeat(200)).is_ok());
    }
}
