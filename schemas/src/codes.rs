//! The currency and country codes a transaction may carry: ISO 4217 and ISO 3166-1 alpha-2.
//! A code that merely looks right (`XYZ`, `XX`) is refused like any other bad field, since the
//! business metrics convert by currency and the features compare countries.

/// ISO 4217 codes of the currencies in use (2025 list, funds codes included; precious metals,
/// `XDR`, `XTS` and `XXX` left out: no payment is made in them). `ANG` and `BGN`, withdrawn in
/// 2025–2026, are kept while payments in them may still be settled or refunded.
pub const CURRENCIES: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF", "BMD",
    "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF", "CLP", "CNY",
    "COP", "COU", "CRC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP",
    "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IQD", "IRR", "ISK",
    "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL",
    "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD",
    "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB",
    "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB",
    "TJS", "TMT", "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED",
    "VES", "VND", "VUV", "WST", "XAF", "XCD", "XCG", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWG",
];

/// ISO 3166-1 alpha-2 codes officially assigned, and `XK` (Kosovo), which card networks use.
pub const COUNTRIES: &[&str] = &[
    "AD", "AE", "AF", "AG", "AI", "AL", "AM", "AO", "AQ", "AR", "AS", "AT", "AU", "AW", "AX", "AZ", "BA", "BB", "BD", "BE",
    "BF", "BG", "BH", "BI", "BJ", "BL", "BM", "BN", "BO", "BQ", "BR", "BS", "BT", "BV", "BW", "BY", "BZ", "CA", "CC", "CD",
    "CF", "CG", "CH", "CI", "CK", "CL", "CM", "CN", "CO", "CR", "CU", "CV", "CW", "CX", "CY", "CZ", "DE", "DJ", "DK", "DM",
    "DO", "DZ", "EC", "EE", "EG", "EH", "ER", "ES", "ET", "FI", "FJ", "FK", "FM", "FO", "FR", "GA", "GB", "GD", "GE", "GF",
    "GG", "GH", "GI", "GL", "GM", "GN", "GP", "GQ", "GR", "GS", "GT", "GU", "GW", "GY", "HK", "HM", "HN", "HR", "HT", "HU",
    "ID", "IE", "IL", "IM", "IN", "IO", "IQ", "IR", "IS", "IT", "JE", "JM", "JO", "JP", "KE", "KG", "KH", "KI", "KM", "KN",
    "KP", "KR", "KW", "KY", "KZ", "LA", "LB", "LC", "LI", "LK", "LR", "LS", "LT", "LU", "LV", "LY", "MA", "MC", "MD", "ME",
    "MF", "MG", "MH", "MK", "ML", "MM", "MN", "MO", "MP", "MQ", "MR", "MS", "MT", "MU", "MV", "MW", "MX", "MY", "MZ", "NA",
    "NC", "NE", "NF", "NG", "NI", "NL", "NO", "NP", "NR", "NU", "NZ", "OM", "PA", "PE", "PF", "PG", "PH", "PK", "PL", "PM",
    "PN", "PR", "PS", "PT", "PW", "PY", "QA", "RE", "RO", "RS", "RU", "RW", "SA", "SB", "SC", "SD", "SE", "SG", "SH", "SI",
    "SJ", "SK", "SL", "SM", "SN", "SO", "SR", "SS", "ST", "SV", "SX", "SY", "SZ", "TC", "TD", "TF", "TG", "TH", "TJ", "TK",
    "TL", "TM", "TN", "TO", "TR", "TT", "TV", "TW", "TZ", "UA", "UG", "UM", "US", "UY", "UZ", "VA", "VC", "VE", "VG", "VI",
    "VN", "VU", "WF", "WS", "XK", "YE", "YT", "ZA", "ZM", "ZW",
];

/// Whether `code` is one of [`CURRENCIES`].
pub fn is_currency(code: &str) -> bool {
    contains(&CURRENCY_SET, 3, code)
}

/// Whether `code` is one of [`COUNTRIES`].
pub fn is_country(code: &str) -> bool {
    contains(&COUNTRY_SET, 2, code)
}

// Every record is checked against both lists: each is also kept as a set of bits, one per
// possible code of its length (26 letters per place), built when the project is compiled.
const CURRENCY_SET: [u64; 26 * 26 * 26 / 64 + 1] = code_set(CURRENCIES, 3);
const COUNTRY_SET: [u64; 26 * 26 / 64 + 1] = code_set(COUNTRIES, 2);

/// The position of a code of uppercase ASCII letters among all codes of its length.
const fn letters_index(code: &[u8]) -> Option<usize> {
    let (mut i, mut index) = (0, 0);
    while i < code.len() {
        if !code[i].is_ascii_uppercase() {
            return None;
        }
        index = index * 26 + (code[i] - b'A') as usize;
        i += 1;
    }
    Some(index)
}

const fn code_set<const WORDS: usize>(codes: &[&str], len: usize) -> [u64; WORDS] {
    let mut bits = [0u64; WORDS];
    let mut i = 0;
    while i < codes.len() {
        let code = codes[i].as_bytes();
        let Some(index) = letters_index(code) else { panic!("a code that is not uppercase letters") };
        assert!(code.len() == len, "a code of another length");
        bits[index / 64] |= 1 << (index % 64);
        i += 1;
    }
    bits
}

fn contains(set: &[u64], len: usize, code: &str) -> bool {
    code.len() == len && letters_index(code.as_bytes()).is_some_and(|i| set[i / 64] >> (i % 64) & 1 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_are_sorted_without_repeats_so_that_lookups_find_every_code() {
        for list in [CURRENCIES, COUNTRIES] {
            assert!(list.windows(2).all(|w| w[0] < w[1]), "{list:?}");
            assert!(list.iter().all(|c| list.binary_search(c).is_ok()));
        }
        assert!(CURRENCIES.iter().all(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())));
        assert!(COUNTRIES.iter().all(|c| c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase())));
        assert_eq!(COUNTRIES.len(), 249 + 1, "ISO 3166-1 assigns 249 codes; XK besides");
    }

    /// Every code of two and three letters: in the set exactly when in the list.
    #[test]
    fn the_sets_hold_exactly_the_listed_codes() {
        let letters = b'A'..=b'Z';
        for a in letters.clone() {
            for b in letters.clone() {
                let two = String::from_utf8(vec![a, b]).unwrap();
                assert_eq!(is_country(&two), COUNTRIES.binary_search(&two.as_str()).is_ok(), "{two}");
                for c in letters.clone() {
                    let three = String::from_utf8(vec![a, b, c]).unwrap();
                    assert_eq!(is_currency(&three), CURRENCIES.binary_search(&three.as_str()).is_ok(), "{three}");
                }
            }
        }
    }

    #[test]
    fn real_codes_pass_and_lookalikes_do_not() {
        for c in ["USD", "EUR", "GBP", "JPY", "CHF", "BRL", "INR", "MXN", "CAD", "AUD"] {
            assert!(is_currency(c), "{c}");
        }
        for c in ["XYZ", "usd", "US", "USDT", "BTC", "XAU", "XXX", ""] {
            assert!(!is_currency(c), "{c}");
        }
        for c in ["US", "GB", "DE", "FR", "NL", "ES", "IT", "CA", "BR", "IN", "XK"] {
            assert!(is_country(c), "{c}");
        }
        for c in ["XX", "UK", "EU", "us", "USA", "", "U", "É", "U\u{0}", "[S"] {
            assert!(!is_country(c), "{c}");
        }
    }
}
