//! Personal data in text: e-mail addresses, phone numbers, payment card
//! numbers (Luhn-checked), IBANs (ISO 13616 mod-97 checked, per-country
//! length), US social security numbers (dashed or spaced, SSA-valid ranges)
//! and IP addresses (v4 and v6).
//!
//! Each detector is a hand-written scanner over bytes: one pass, no
//! backtracking, and a candidate must pass its checksum or structure rules,
//! so numbers that merely look alike (order ids, versions, dates, hashes)
//! are left alone.

use super::{Finding, Kind};

/// Every personal-data finding in `text`, in order, not overlapping (the
/// first detector to claim a byte keeps it).
pub fn scan(text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    emails(text, &mut found);
    let c = Candidates::of(text.as_bytes());
    if !c.numbers.is_empty() {
        cards(text, &c.numbers, &mut found);
        ssns(text, &c.numbers, &mut found);
        phones(text, &c.numbers, &mut found);
    }
    if !c.ibans.is_empty() {
        ibans(text, &c.ibans, &mut found);
    }
    ips(text, &c.numbers, &mut found);
    super::settle(found)
}

/// Where the number-shaped detectors may start, found in one pass over
/// the text (eight bytes at a time where they hold no digit).
#[derive(Debug, Default)]
struct Candidates {
    /// Digits not preceded by an ASCII letter or digit: where a card, an
    /// SSN, a phone number or an IPv4 address may start.
    numbers: Vec<usize>,
    /// Two capital letters, not preceded by a letter or digit, then two
    /// digits: where an IBAN may start.
    ibans: Vec<usize>,
}

impl Candidates {
    fn of(h: &[u8]) -> Self {
        const ONES: u64 = u64::from_le_bytes([1; 8]);
        const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
        let mut c = Self::default();
        let mut look = |i: usize| {
            let prev = if i > 0 { h[i - 1] } else { b' ' };
            if !prev.is_ascii_alphanumeric() {
                c.numbers.push(i);
            } else if i >= 2
                && prev.is_ascii_uppercase()
                && h[i - 2].is_ascii_uppercase()
                && h.get(i + 1).is_some_and(u8::is_ascii_digit)
                && (i == 2 || !h[i - 3].is_ascii_alphanumeric())
            {
                c.ibans.push(i - 2);
            }
        };
        let mut i = 0;
        while i + 8 <= h.len() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&h[i..i + 8]);
            // A digit is exactly a byte that becomes 0..=9 once XORed with
            // 0x30: its low seven bits plus 0x76 stay below 0x80 (no carry
            // leaves a byte), and its top bit is clear.
            let y = u64::from_le_bytes(w) ^ (ONES * 0x30);
            let mut digits = !(((y & !HIGHS) + ONES * 0x76) | y) & HIGHS;
            while digits != 0 {
                look(i + digits.trailing_zeros() as usize / 8);
                digits &= digits - 1;
            }
            i += 8;
        }
        for (k, b) in h.iter().enumerate().skip(i) {
            if b.is_ascii_digit() {
                look(k);
            }
        }
        c
    }
}

fn is_local(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._%+-".contains(&b)
}

fn is_label(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn emails(text: &str, out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    for at in memchr::memchr_iter(b'@', h) {
        let mut s = at;
        while s > 0 && is_local(h[s - 1]) && at - s < 64 {
            s -= 1;
        }
        // The local part neither starts nor ends with a dot.
        while s < at && h[s] == b'.' {
            s += 1;
        }
        if s == at || h[at - 1] == b'.' {
            continue;
        }
        // Domain: labels of letters, digits and hyphens, dot-separated,
        // ending with an alphabetic top-level label of 2 or more.
        let mut e = at + 1;
        let mut last_dot = None;
        while e < h.len() && (is_label(h[e]) || (h[e] == b'.' && e > at + 1 && h[e - 1] != b'.')) {
            if h[e] == b'.' {
                last_dot = Some(e);
            }
            e += 1;
        }
        // A trailing dot ends the sentence, not the address.
        if e > at + 1 && h[e - 1] == b'.' {
            e -= 1;
            last_dot = h[at + 1..e]
                .iter()
                .rposition(|&b| b == b'.')
                .map(|p| p + at + 1);
        }
        let Some(dot) = last_dot else { continue };
        let tld = &h[dot + 1..e];
        if tld.len() < 2 || !tld.iter().all(u8::is_ascii_alphabetic) || dot == at + 1 {
            continue;
        }
        out.push(Finding::new(Kind::Email, s, e));
    }
}

/// Most digits a card number has.
const CARD_DIGITS: usize = 19;

/// The digits of a run starting at `i` that allows single spaces or dashes
/// between digits: (end, how many, the digits). Stops after 20 digits.
fn digit_run(h: &[u8], i: usize) -> (usize, usize, [u8; CARD_DIGITS + 1]) {
    let mut digits = [0u8; CARD_DIGITS + 1];
    let mut n = 0;
    let mut e = i;
    let mut j = i;
    while j < h.len() && n <= CARD_DIGITS {
        if h[j].is_ascii_digit() {
            digits[n] = h[j] - b'0';
            n += 1;
            j += 1;
            e = j;
        } else if (h[j] == b' ' || h[j] == b'-')
            && j + 1 < h.len()
            && h[j + 1].is_ascii_digit()
            && n > 0
        {
            j += 1;
        } else {
            break;
        }
    }
    (e, n, digits)
}

/// Whether the byte before `i` or at `e` continues a word or number (so
/// the candidate is part of something longer).
fn glued(h: &[u8], i: usize, e: usize) -> bool {
    let before = i > 0 && (h[i - 1].is_ascii_alphanumeric() || h[i - 1] == b'_');
    let after = e < h.len() && (h[e].is_ascii_alphanumeric() || h[e] == b'_');
    before || after
}

/// The Luhn check.
fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(k, &d)| {
            let d = u32::from(d);
            if k % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Whether `digits` start like a card of a known network with its length.
fn card_network(digits: &[u8]) -> bool {
    let n = digits.len();
    let prefix = |k: usize| {
        digits
            .iter()
            .take(k)
            .fold(0u32, |a, &d| a * 10 + u32::from(d))
    };
    match digits[0] {
        4 => matches!(n, 13 | 16 | 19),                     // Visa
        5 => (51..=55).contains(&prefix(2)) && n == 16,     // Mastercard
        2 => (2221..=2720).contains(&prefix(4)) && n == 16, // Mastercard 2-series
        3 => match prefix(2) {
            34 | 37 => n == 15, // American Express
            35 => (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&n), // JCB
            36 | 38 | 39 | 30 => (14..=19).contains(&n), // Diners Club
            _ => false,
        },
        6 => {
            (prefix(4) == 6011
                || prefix(2) == 65
                || (644..=649).contains(&prefix(3))
                || prefix(2) == 62)
                && (16..=19).contains(&n)
        }
        _ => false,
    }
}

fn cards(text: &str, starts: &[usize], out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let mut next = 0;
    for &i in starts {
        if i < next {
            continue;
        }
        let (e, n, digits) = digit_run(h, i);
        let digits = &digits[..n];
        if (13..=CARD_DIGITS).contains(&n)
            && !glued(h, i, e)
            && card_network(digits)
            && luhn(digits)
            && consistent_groups(&h[i..e])
        {
            out.push(Finding::new(Kind::Card, i, e));
        }
        next = e.max(i + 1);
    }
}

/// Separators in a card number are all the same (spaces or dashes) and
/// split it into groups of 4 (or the 4-6-5 of American Express), or there
/// are none.
fn consistent_groups(s: &[u8]) -> bool {
    let seps: Vec<u8> = s.iter().copied().filter(|b| !b.is_ascii_digit()).collect();
    if seps.is_empty() {
        return true;
    }
    if seps.iter().any(|&b| b != seps[0]) {
        return false;
    }
    let groups: Vec<usize> = s.split(|b| !b.is_ascii_digit()).map(<[u8]>::len).collect();
    let (last, rest) = groups.split_last().expect("split gives a group");
    (rest.iter().all(|&g| g == 4) && (1..=4).contains(last))
        || groups == [4, 6, 5]
        || groups == [4, 6, 4]
}

/// IBAN length per country (ISO 13616 registry).
fn iban_length(country: &[u8]) -> Option<usize> {
    const LENGTHS: &[(&[u8; 2], usize)] = &[
        (b"AD", 24),
        (b"AE", 23),
        (b"AL", 28),
        (b"AT", 20),
        (b"AZ", 28),
        (b"BA", 20),
        (b"BE", 16),
        (b"BG", 22),
        (b"BH", 22),
        (b"BR", 29),
        (b"BY", 28),
        (b"CH", 21),
        (b"CR", 22),
        (b"CY", 28),
        (b"CZ", 24),
        (b"DE", 22),
        (b"DK", 18),
        (b"DO", 28),
        (b"EE", 20),
        (b"EG", 29),
        (b"ES", 24),
        (b"FI", 18),
        (b"FO", 18),
        (b"FR", 27),
        (b"GB", 22),
        (b"GE", 22),
        (b"GI", 23),
        (b"GL", 18),
        (b"GR", 27),
        (b"GT", 28),
        (b"HR", 21),
        (b"HU", 28),
        (b"IE", 22),
        (b"IL", 23),
        (b"IQ", 23),
        (b"IS", 26),
        (b"IT", 27),
        (b"JO", 30),
        (b"KW", 30),
        (b"KZ", 20),
        (b"LB", 28),
        (b"LC", 32),
        (b"LI", 21),
        (b"LT", 20),
        (b"LU", 20),
        (b"LV", 21),
        (b"MC", 27),
        (b"MD", 24),
        (b"ME", 22),
        (b"MK", 19),
        (b"MR", 27),
        (b"MT", 31),
        (b"MU", 30),
        (b"NL", 18),
        (b"NO", 15),
        (b"PK", 24),
        (b"PL", 28),
        (b"PS", 29),
        (b"PT", 25),
        (b"QA", 29),
        (b"RO", 24),
        (b"RS", 22),
        (b"SA", 24),
        (b"SC", 31),
        (b"SE", 24),
        (b"SI", 19),
        (b"SK", 24),
        (b"SM", 27),
        (b"ST", 25),
        (b"SV", 28),
        (b"TL", 23),
        (b"TN", 24),
        (b"TR", 26),
        (b"UA", 29),
        (b"VA", 22),
        (b"VG", 24),
        (b"XK", 20),
    ];
    LENGTHS
        .iter()
        .find(|(c, _)| c.as_slice() == country)
        .map(|(_, n)| *n)
}

/// ISO 7064 mod 97-10 over the rearranged IBAN.
fn iban_valid(chars: &[u8]) -> bool {
    let rearranged = chars[4..].iter().chain(&chars[..4]);
    let mut rem: u32 = 0;
    for &c in rearranged {
        let v = if c.is_ascii_digit() {
            u32::from(c - b'0')
        } else {
            u32::from(c.to_ascii_uppercase() - b'A') + 10
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

fn ibans(text: &str, starts: &[usize], out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let mut next = 0;
    for &i in starts {
        if i < next {
            continue;
        }
        let Some(len) = iban_length(&h[i..i + 2]) else {
            continue;
        };
        // Characters, allowing single spaces between groups of 4.
        let mut chars = Vec::with_capacity(len);
        let mut j = i;
        let mut e = i;
        while j < h.len() && chars.len() < len {
            if h[j].is_ascii_alphanumeric() {
                chars.push(h[j]);
                j += 1;
                e = j;
            } else if h[j] == b' '
                && chars.len() % 4 == 0
                && j + 1 < h.len()
                && h[j + 1].is_ascii_alphanumeric()
            {
                j += 1;
            } else {
                break;
            }
        }
        if chars.len() == len
            && !(e < h.len() && h[e].is_ascii_alphanumeric())
            && chars[4..]
                .iter()
                .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            && iban_valid(&chars)
        {
            out.push(Finding::new(Kind::Iban, i, e));
            next = e;
        }
    }
}

fn ssns(text: &str, starts: &[usize], out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    for &i in starts {
        if i + 11 > h.len() {
            break;
        }
        let s = &h[i..i + 11];
        let sep = s[3];
        if !(sep == b'-' || sep == b' ')
            || s[6] != sep
            || !s
                .iter()
                .enumerate()
                .all(|(k, b)| k == 3 || k == 6 || b.is_ascii_digit())
            || glued(h, i, i + 11)
        {
            continue;
        }
        let num = |r: std::ops::Range<usize>| {
            s[r].iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0'))
        };
        let (area, group, serial) = (num(0..3), num(4..6), num(7..11));
        if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
            continue;
        }
        out.push(Finding::new(Kind::Ssn, i, i + 11));
    }
}

fn phones(text: &str, numbers: &[usize], out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    // Digits, and the `+` or `(` a number may open with, in order.
    let mut signs = memchr::memchr2_iter(b'+', b'(', h).peekable();
    let mut digits = numbers.iter().copied().peekable();
    let mut next = 0;
    loop {
        let i = match (signs.peek(), digits.peek()) {
            (Some(&a), Some(&b)) if a < b => signs.next(),
            (Some(_), None) => signs.next(),
            (_, Some(_)) => digits.next(),
            (None, None) => None,
        };
        let Some(i) = i else { break };
        let word_before = i > 0 && (h[i - 1].is_ascii_alphanumeric() || h[i - 1] == b'_');
        if i < next || word_before {
            continue;
        }
        if let Some(e) = phone_at(h, i) {
            out.push(Finding::new(Kind::Phone, i, e));
            next = e;
        }
    }
}

/// A phone number at `i`: `+` and 8 to 15 digits (E.164, separators
/// allowed), or a North American number written with separators:
/// `(NXX) NXX-XXXX`, `NXX-NXX-XXXX`, `NXX.NXX.XXXX`, `NXX NXX XXXX`.
fn phone_at(h: &[u8], i: usize) -> Option<usize> {
    /// Most digit groups a phone number is written in.
    const GROUPS: usize = 8;
    let mut j = i;
    let plus = h[i] == b'+';
    if plus {
        j += 1;
    }
    let mut digits = 0;
    let mut groups = [0usize; GROUPS];
    let mut seps = [0u8; GROUPS];
    let mut n = 0;
    let mut cur = 0;
    let mut e = j;
    let mut paren = false;
    while j < h.len() && digits < 16 {
        let c = h[j];
        if c.is_ascii_digit() {
            digits += 1;
            cur += 1;
            j += 1;
            e = j;
        } else if c == b'(' && digits == 0 && !paren {
            paren = true;
            j += 1;
        } else if (c == b')' && paren && cur > 0)
            || (matches!(c, b'-' | b'.' | b' ')
                && cur > 0
                && h.get(j + 1).is_some_and(u8::is_ascii_digit))
        {
            if n == GROUPS {
                return None;
            }
            groups[n] = cur;
            seps[n] = c;
            n += 1;
            cur = 0;
            j += 1;
            if c == b')' && h.get(j) == Some(&b' ') {
                j += 1;
            }
        } else {
            break;
        }
    }
    if e < h.len() && (h[e].is_ascii_alphanumeric() || h[e] == b'_') {
        return None;
    }
    if plus {
        return ((8..=15).contains(&digits) && h[i + 1].is_ascii_digit() && h[i + 1] != b'0')
            .then_some(e);
    }
    // North American: three groups 3-3-4 with one kind of separator (or a
    // parenthesised area code), exchange and area codes not starting 0/1.
    if n != 2 || groups[0] != 3 || groups[1] != 3 || cur != 4 || digits != 10 {
        return None;
    }
    // One kind of separator, or a parenthesised area code.
    let same = seps[0] == seps[1] || seps[0] == b')';
    let area = h[i + usize::from(paren)];
    (same && area >= b'2' && (!paren || h[i] == b'(')).then_some(e)
}

/// Whether `b` may stand in an IP address as written.
fn ip_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b'.' || b == b':'
}

fn ips(text: &str, numbers: &[usize], out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let word = |i: usize| {
        i > 0 && (h[i - 1].is_ascii_alphanumeric() || matches!(h[i - 1], b'.' | b':' | b'_'))
    };
    // An address starts a run of hex digits, dots and colons: an IPv4 one
    // with a digit, an IPv6 one anywhere in a run holding a colon within
    // its first 45 bytes.
    let v4 = numbers.iter().copied().filter(|&i| !word(i));
    let mut v6 = Vec::new();
    let mut last = usize::MAX;
    for c in memchr::memchr_iter(b':', h) {
        let mut s = c;
        while s > 0 && ip_byte(h[s - 1]) && c - s < 45 {
            s -= 1;
        }
        // An IPv6 address has a second colon within its first 45 bytes.
        let second = || {
            h[c + 1..(s + 45).min(h.len())]
                .iter()
                .take_while(|&&b| ip_byte(b))
                .any(|&b| b == b':')
        };
        if s != last
            && c - s < 45
            && (h[s].is_ascii_hexdigit() || h[s] == b':')
            && !word(s)
            && second()
        {
            v6.push(s);
        }
        last = s;
    }
    // Both lists are in order: merged, each start once.
    let mut starts = Vec::with_capacity(numbers.len() + v6.len());
    let mut v6 = v6.into_iter().peekable();
    for i in v4 {
        while let Some(&j) = v6.peek().filter(|&&j| j <= i) {
            if j < i {
                starts.push(j);
            }
            v6.next();
        }
        starts.push(i);
    }
    starts.extend(v6);
    let mut next = 0;
    for i in starts {
        if i < next {
            continue;
        }
        let mut e = i;
        while e < h.len() && ip_byte(h[e]) && e - i < 45 {
            e += 1;
        }
        // A trailing dot or colon ends a sentence or a label.
        while e > i && matches!(h[e - 1], b'.' | b':') && !h[i..e].ends_with(b"::") {
            e -= 1;
        }
        let glued_after = e < h.len() && (h[e].is_ascii_alphanumeric() || h[e] == b'_');
        let token = &text[i..e];
        let dots = token.bytes().filter(|&b| b == b'.').count();
        let colons = token.bytes().filter(|&b| b == b':').count();
        let v4 = dots == 3 && h[i].is_ascii_digit() && token.parse::<std::net::Ipv4Addr>().is_ok();
        let v6 = colons >= 2 && token.parse::<std::net::Ipv6Addr>().is_ok();
        if !glued_after && (v4 || v6) && !version_like(h, i) {
            out.push(Finding::new(Kind::Ip, i, e));
            next = e;
        } else {
            next = e.max(i + 1);
        }
    }
}

/// Whether the text right before `i` names a version (`v1.2.3.4`,
/// `version 1.2.3.4`).
fn version_like(h: &[u8], i: usize) -> bool {
    let before = &h[..i];
    let trimmed = before.strip_suffix(b" ").unwrap_or(before);
    let lower: Vec<u8> = trimmed
        .iter()
        .rev()
        .take(8)
        .rev()
        .map(u8::to_ascii_lowercase)
        .collect();
    lower.ends_with(b"version")
        || lower.ends_with(b"ver")
        || (i > 0 && matches!(h[i - 1], b'v' | b'V'))
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;
