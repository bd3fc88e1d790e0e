//! The scanners as first written, each walking the whole text byte by
//! byte: the reference the one-pass candidates are tested against.

use super::{
    CARD_DIGITS, Finding, Kind, card_network, consistent_groups, digit_run, emails, glued,
    iban_length, iban_valid, luhn, phone_at, version_like,
};

/// Every finding, each scanner over every byte.
pub(super) fn scan(text: &str) -> Vec<Finding> {
    let mut found = Vec::new();
    emails(text, &mut found);
    cards(text, &mut found);
    ibans(text, &mut found);
    ssns(text, &mut found);
    phones(text, &mut found);
    ips(text, &mut found);
    crate::guard::settle(found)
}

fn cards(text: &str, out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let mut i = 0;
    while i < h.len() {
        if !h[i].is_ascii_digit() || (i > 0 && (h[i - 1].is_ascii_alphanumeric())) {
            i += 1;
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
            i = e;
            continue;
        }
        i = e.max(i + 1);
    }
}

fn ibans(text: &str, out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let mut i = 0;
    while i + 4 <= h.len() {
        let start_ok = h[i].is_ascii_uppercase()
            && h[i + 1].is_ascii_uppercase()
            && h[i + 2].is_ascii_digit()
            && h[i + 3].is_ascii_digit()
            && (i == 0 || !h[i - 1].is_ascii_alphanumeric());
        let Some(len) = start_ok.then(|| iban_length(&h[i..i + 2])).flatten() else {
            i += 1;
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
            i = e;
        } else {
            i += 1;
        }
    }
}

fn ssns(text: &str, out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    if h.len() < 11 {
        return;
    }
    for i in 0..=h.len() - 11 {
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

fn phones(text: &str, out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let mut i = 0;
    while i < h.len() {
        let b = h[i];
        let word_before = i > 0 && (h[i - 1].is_ascii_alphanumeric() || h[i - 1] == b'_');
        if word_before || !(b == b'+' || b == b'(' || b.is_ascii_digit()) {
            i += 1;
            continue;
        }
        match phone_at(h, i) {
            Some(e) => {
                out.push(Finding::new(Kind::Phone, i, e));
                i = e;
            }
            None => i += 1,
        }
    }
}

fn ips(text: &str, out: &mut Vec<Finding>) {
    let h = text.as_bytes();
    let mut i = 0;
    while i < h.len() {
        let starts = h[i].is_ascii_hexdigit() || h[i] == b':';
        let word_before =
            i > 0 && (h[i - 1].is_ascii_alphanumeric() || matches!(h[i - 1], b'.' | b':' | b'_'));
        if !starts || word_before {
            i += 1;
            continue;
        }
        let mut e = i;
        while e < h.len()
            && (h[e].is_ascii_hexdigit() || h[e] == b'.' || h[e] == b':')
            && e - i < 45
        {
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
            i = e;
        } else {
            i = e.max(i + 1);
        }
    }
}
