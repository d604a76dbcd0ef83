//! ZooKeeper transaction ids as the contract prints them: decimal integers
//! in JSON (scripts compare them numerically), `0x…` hex for people.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A zxid: the epoch in the high 32 bits, the counter in the low 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Zxid(pub i64);

impl fmt::Display for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl std::str::FromStr for Zxid {
    type Err = String;

    /// Decimal or `0x…` hex, as an operator copies it from either output.
    fn from_str(s: &str) -> Result<Self, String> {
        let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => i64::from_str_radix(hex, 16),
            None => s.parse(),
        };
        parsed
            .map(Zxid)
            .map_err(|e| format!("{s:?} is not a zxid (decimal or 0x hex): {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_decimal_and_text_is_hex() {
        assert_eq!(serde_json::to_string(&Zxid(0x113)).unwrap(), "275");
        assert_eq!(Zxid(0x113).to_string(), "0x113");
        assert_eq!(serde_json::from_str::<Zxid>("275").unwrap(), Zxid(275));
    }

    #[test]
    fn zxids_parse_in_decimal_and_hex() {
        assert_eq!("4294967297".parse(), Ok(Zxid(0x1_0000_0001)));
        assert_eq!("0x100000001".parse(), Ok(Zxid(4294967297)));
        assert!("zz".parse::<Zxid>().is_err());
    }
}
