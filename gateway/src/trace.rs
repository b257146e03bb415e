//! W3C trace context for a request: continue the caller's trace when it sent a valid
//! `traceparent`, otherwise start a new one. A malformed header starts a new trace, never an error.

use rand::Rng;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: String,
    pub span_id: String,
    pub sampled: bool,
}

impl TraceContext {
    /// A new span under `parent` (a `traceparent` header value), or a new trace.
    pub fn child_of(parent: Option<&str>) -> Self {
        let mut rng = rand::rng();
        let span_id = hex(&rng.random::<[u8; 8]>());
        match parent.and_then(parse_traceparent) {
            Some((trace_id, sampled)) => Self { trace_id, span_id, sampled },
            None => Self { trace_id: hex(&rng.random::<[u8; 16]>()), span_id, sampled: true },
        }
    }

    pub fn traceparent(&self) -> String {
        format!("00-{}-{}-{}", self.trace_id, self.span_id, if self.sampled { "01" } else { "00" })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (trace id, sampled) of a valid version-00 `traceparent`.
pub fn parse_traceparent(v: &str) -> Option<(String, bool)> {
    let parts: Vec<&str> = v.trim().split('-').collect();
    let [version, trace_id, span_id, flags] = parts.as_slice() else { return None };
    let is_hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if *version != "00" || !is_hex(trace_id, 32) || !is_hex(span_id, 16) || !is_hex(flags, 2) {
        return None;
    }
    if trace_id.bytes().all(|b| b == b'0') || span_id.bytes().all(|b| b == b'0') {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some((trace_id.to_string(), flags & 1 == 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continues_a_valid_parent_and_replaces_a_bad_one() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let c = TraceContext::child_of(Some(parent));
        assert_eq!(c.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_ne!(c.span_id, "b7ad6b7169203331");
        assert!(c.traceparent().starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        for bad in ["", "garbage", "00-xyz-b7ad6b7169203331-01", "00-00000000000000000000000000000000-b7ad6b7169203331-01", "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"] {
            let c = TraceContext::child_of(Some(bad));
            assert_eq!(c.trace_id.len(), 32, "{bad}");
            assert_ne!(c.trace_id, "0af7651916cd43dd8448eb211c80319c");
        }
        assert!(parse_traceparent(&TraceContext::child_of(None).traceparent()).is_some());
    }
}
