//! Removes personal data from log text before it is written: card numbers (digit runs of 13–19
//! digits, spaces or dashes allowed between, that pass the Luhn check), e-mail addresses and
//! phone numbers (an optional `+`, then 9–15 digits with spaces, dashes, dots or parentheses).

/// `text` with card numbers, e-mail addresses and phone numbers replaced by `[card]`, `[email]`
/// and `[phone]`. Borrows when there is nothing to replace.
pub fn scrub(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.bytes().any(|b| b.is_ascii_digit() || b == b'@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let emails = replace_emails(text);
    let numbers = replace_numbers(&emails);
    if numbers == text { std::borrow::Cow::Borrowed(text) } else { std::borrow::Cow::Owned(numbers) }
}

fn is_email_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

fn replace_emails(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '@' {
            // Local part: walk back over what `out` already holds.
            let local: usize = out.chars().rev().take_while(|c| is_email_char(*c)).count();
            let mut j = i + 1;
            while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '-' || chars[j] == '.') {
                j += 1;
            }
            let domain: String = chars[i + 1..j].iter().collect();
            let domain = domain.trim_end_matches('.');
            if local > 0 && domain.contains('.') && !domain.starts_with('.') {
                let keep = out.chars().count() - local;
                out = out.chars().take(keep).collect();
                out.push_str("[email]");
                i += 1 + domain.chars().count();
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 { if d * 2 > 9 { d * 2 - 9 } else { d * 2 } } else { d }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether a run of digits and separators is an IPv4 address (four dot-separated groups of one
/// to three digits, as in a broker's address) or starts with a date (`2026-11-25 10:00`): both
/// have a phone number's digit count and separators, and neither is personal data.
fn address_or_date(run: &str) -> bool {
    let groups: Vec<&str> = run.split(|c: char| !c.is_ascii_digit()).collect();
    let dotted = run.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    let ipv4 = dotted && groups.len() == 4 && groups.iter().all(|g| (1..=3).contains(&g.len()));
    let b = run.as_bytes();
    let date = b.len() >= 10 && groups.len() >= 3 && [groups[0].len(), groups[1].len(), groups[2].len()] == [4, 2, 2] && b[4] == b'-' && b[7] == b'-';
    ipv4 || date
}

/// Finds runs of digits with separators and replaces the ones that look like cards or phones.
fn replace_numbers(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    while i < bytes.len() {
        let starts = bytes[i].is_ascii_digit() || (bytes[i] == b'+' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit)) || (bytes[i] == b'(' && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        let preceded_by_word = i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if !starts || preceded_by_word {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut digits = Vec::new();
        while j < bytes.len() {
            let b = bytes[j];
            if b.is_ascii_digit() {
                digits.push(b - b'0');
            } else if !(matches!(b, b' ' | b'-' | b'.' | b'(' | b')') || (b == b'+' && j == i)) || !bytes.get(j + 1).is_some_and(|n| n.is_ascii_digit() || *n == b'(' || *n == b' ') {
                break;
            }
            j += 1;
        }
        // Trailing separators are not part of the number.
        while j > i && !bytes[j - 1].is_ascii_digit() && bytes[j - 1] != b')' {
            j -= 1;
        }
        let followed_by_word = bytes.get(j).is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let run = &text[i..j];
        let separated = run.bytes().any(|b| !b.is_ascii_digit());
        let replacement = if followed_by_word {
            None
        } else if (13..=19).contains(&digits.len()) && luhn(&digits) {
            Some("[card]")
        } else if (9..=15).contains(&digits.len()) && (separated || run.starts_with('+')) && !address_or_date(run) {
            // Unseparated digit runs are ids and amounts far more often than phone numbers.
            Some("[phone]")
        } else {
            None
        };
        if let Some(r) = replacement {
            out.push_str(&text[last..i]);
            out.push_str(r);
            last = j;
        }
        i = j.max(i + 1);
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn cards_are_removed_when_luhn_valid() {
        assert_eq!(scrub("card 4111 1111 1111 1111 declined"), "card [card] declined");
        assert_eq!(scrub("pan=4012888888881881;"), "pan=[card];");
        assert_eq!(scrub("5500-0000-0000-0004"), "[card]");
        // Not Luhn-valid: an id, kept.
        assert_eq!(scrub("order 4111111111111112"), "order 4111111111111112");
    }

    #[test]
    fn emails_and_phones_are_removed() {
        assert_eq!(scrub("user jane.doe+x@example.co.uk wrote"), "user [email] wrote");
        assert_eq!(scrub("call +1 (415) 555-2671 now"), "call [phone] now");
        assert_eq!(scrub("tel 020 7946 0958"), "tel [phone]");
        assert_eq!(scrub("a@b is not an address"), "a@b is not an address");
    }

    #[test]
    fn ordinary_values_are_kept() {
        for s in ["txn-18cf2a-1234567890", "amount 149.99 USD", "user 12345", "2026-11-25T10:00:00Z", "offset 1234567890123", "trace 0af7651916cd43dd8448eb211c80319c"] {
            assert_eq!(scrub(s), s);
        }
        assert!(matches!(scrub("no digits here"), std::borrow::Cow::Borrowed(_)));
        // Addresses and timestamps in operational messages have a phone number's digit count.
        for s in [
            "broker 192.168.100.200:9092 unreachable",
            "collector at 10.120.130.140 refused",
            "started 2026-11-25 10:00:00.123",
            "window 2026-11-25 10 to 2026-11-25 11",
        ] {
            assert_eq!(scrub(s), s);
        }
        // Dotted phone numbers are still phone numbers.
        assert_eq!(scrub("call 415.555.2671"), "call [phone]");
        assert_eq!(scrub("tel +44 20 7946 0958."), "tel [phone].");
    }
}
