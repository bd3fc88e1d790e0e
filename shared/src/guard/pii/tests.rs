//! Each kind found; look-alikes left alone.

use super::*;
use crate::guard::Kind;

fn kinds(text: &str) -> Vec<(Kind, &str)> {
    scan(text)
        .into_iter()
        .map(|f| (f.kind, &text[f.start..f.end]))
        .collect()
}

fn only(text: &str, kind: Kind, value: &str) {
    assert_eq!(kinds(text), vec![(kind, value)], "{text}");
}

fn none(text: &str) {
    assert_eq!(kinds(text), vec![], "{text}");
}

#[test]
fn emails() {
    only(
        "write to jane.doe+billing@example.co.uk.",
        Kind::Email,
        "jane.doe+billing@example.co.uk",
    );
    only("<a@b.io>", Kind::Email, "a@b.io");
    none("user@localhost, @handle, a@b.c, name@.com, foo@bar");
}

#[test]
fn cards_pass_luhn_and_a_network() {
    only(
        "card 4111 1111 1111 1111 on file",
        Kind::Card,
        "4111 1111 1111 1111",
    );
    only("amex 3782-822463-10005", Kind::Card, "3782-822463-10005");
    only("mc 5555555555554444", Kind::Card, "5555555555554444");
    // Luhn fails; an order id; mixed separators; unknown network.
    none("4111 1111 1111 1112");
    none("order 1234567890123456");
    none("4111-1111 1111-1111");
    none("9111111111111111");
}

#[test]
fn ibans_pass_their_checksum_and_length() {
    only(
        "pay GB82 WEST 1234 5698 7654 32 today",
        Kind::Iban,
        "GB82 WEST 1234 5698 7654 32",
    );
    only(
        "DE89370400440532013000",
        Kind::Iban,
        "DE89370400440532013000",
    );
    none("GB82 WEST 1234 5698 7654 33");
    none("DE8937040044053201300");
}

#[test]
fn ssns_in_valid_ranges() {
    only("ssn 123-45-6789.", Kind::Ssn, "123-45-6789");
    none("000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000");
    none("1123-45-6789 and 123-45-67890 and 123-456-789");
}

#[test]
fn phones_international_and_north_american() {
    only("call +44 20 7946 0958 now", Kind::Phone, "+44 20 7946 0958");
    only("(415) 555-2671", Kind::Phone, "(415) 555-2671");
    only("415.555.2671", Kind::Phone, "415.555.2671");
    // Dates, versions, plain numbers, a mixed separator, a +0 prefix.
    none("2024-05-17 v1.2.3 12345678901 415-555.2671 +0123456789 call 555-1234");
}

#[test]
fn ip_addresses() {
    only("from 192.168.10.254:", Kind::Ip, "192.168.10.254");
    only(
        "peer 2001:db8::8a2e:370:7334 ok",
        Kind::Ip,
        "2001:db8::8a2e:370:7334",
    );
    none("999.1.1.1 1.2.3 version 1.2.3.4 v10.0.0.1 12:30:45");
}

#[test]
fn findings_do_not_overlap_and_redaction_replaces_exactly_the_span() {
    let text = "mail a@b.io or call (415) 555-2671";
    let f = scan(text);
    assert_eq!(
        crate::guard::redact(text, &f),
        "mail [REDACTED:email] or call [REDACTED:phone]"
    );
    assert_eq!(
        crate::guard::mask(
            "card 4111 1111 1111 1111!",
            &scan("card 4111 1111 1111 1111!")
        ),
        "card **** **** **** 1111!"
    );
}

mod against_the_reference {
    use proptest::prelude::*;

    /// Pieces that make numbers, addresses and IBANs, their look-alikes,
    /// and the bytes around them that decide whether they start or end.
    const PIECES: &[&str] = &[
        "0",
        "1",
        "4",
        "5",
        "7",
        "9",
        "12",
        "4111",
        "-",
        " ",
        ".",
        ":",
        "::",
        "+",
        "(",
        ")",
        "_",
        "@",
        "a",
        "f",
        "Z",
        "GB",
        "DE",
        "82",
        "v",
        "version ",
        "\n",
        "é",
        "x.io",
        "mail",
        "4111 1111 1111 1111",
        "123-45-6789",
        "+44 20 7946 0958",
        "(415) 555-2671",
        "192.168.0.1",
        "fe80::1",
        "2001:db8::8a2e:370:7334",
        "GB82 WEST 1234 5698 7654 32",
        "DE89370400440532013000",
        "jane@example.com",
        "3782-822463-10005",
    ];

    fn text() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(PIECES), 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]
        #[test]
        fn one_pass_finds_what_every_byte_finds(t in text()) {
            let fast: Vec<_> = super::scan(&t).into_iter().map(|f| (f.kind, f.start, f.end)).collect();
            let slow: Vec<_> = super::super::reference::scan(&t).into_iter().map(|f| (f.kind, f.start, f.end)).collect();
            prop_assert_eq!(fast, slow, "{:?}", t);
        }
    }
}
