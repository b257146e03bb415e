//! Helpers for the services' settings: repeatable `key=value` flags, secrets masked for printing,
//! the machine's name for default instance ids.

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not key=value"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// A Kafka bootstrap list (`host:port[,host:port...]`), for a setting's value parser: an empty
/// list or entry is refused at start rather than leaving a client that can reach no broker.
pub fn parse_brokers(s: &str) -> Result<String, String> {
    let entries: Vec<&str> = s.split(',').map(str::trim).collect();
    if entries.iter().any(|e| e.is_empty()) {
        return Err(format!("`{s}` is not a list of brokers (host:port, comma-separated)"));
    }
    Ok(entries.join(","))
}

/// A positive, finite amount (`--max-amount`), for a setting's value parser.
pub fn parse_positive_amount(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("`{s}` is not a positive amount")),
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`, for printing.
pub fn mask_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => format!("{}***{}", &url[..scheme + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
    }
}

/// `key=value` settings joined for printing, with the values of secret-looking keys (password,
/// secret, token) masked: `fetch.wait.max.ms=50,sasl.password=***`.
pub fn show_key_values(settings: &[(String, String)]) -> String {
    let secret = |k: &str| ["password", "secret", "token"].iter().any(|s| k.to_ascii_lowercase().contains(s));
    settings.iter().map(|(k, v)| if secret(k) { format!("{k}=***") } else { format!("{k}={v}") }).collect::<Vec<_>>().join(",")
}

/// This machine's name, for default instance ids.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_lists_are_trimmed_and_empty_ones_refused() {
        assert_eq!(parse_brokers("a:9092, b:9092"), Ok("a:9092,b:9092".into()));
        assert_eq!(parse_brokers("kafka"), Ok("kafka".into()));
        for bad in ["", " ", "a:9092,", ",a:9092", "a:1,,b:2"] {
            assert!(parse_brokers(bad).unwrap_err().contains("not a list of brokers"), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_masked() {
        assert_eq!(mask_url("redis://default:hunter2@redis:6379/0"), "redis://default:***@redis:6379/0");
        assert_eq!(mask_url("redis://token@redis:6379"), "redis://***@redis:6379");
        assert_eq!(mask_url("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let settings = [kv("fetch.wait.max.ms", "50"), kv("sasl.password", "hunter2"), kv("sasl.oauthbearer.client.secret", "s3"), kv("linger.ms", "1")];
        assert_eq!(show_key_values(&settings), "fetch.wait.max.ms=50,sasl.password=***,sasl.oauthbearer.client.secret=***,linger.ms=1");
    }

    #[test]
    fn positive_amounts() {
        assert_eq!(parse_positive_amount(" 1000.5 "), Ok(1000.5));
        for bad in ["0", "-5", "NaN", "inf", "lots"] {
            assert!(parse_positive_amount(bad).unwrap_err().contains("not a positive amount"), "{bad}");
        }
    }

    #[test]
    fn key_values() {
        assert_eq!(parse_key_value(" a = 1 ").unwrap(), ("a".to_string(), "1".to_string()));
        assert!(parse_key_value("oops").unwrap_err().contains("key=value"));
    }
}
