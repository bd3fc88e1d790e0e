use super::*;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// The README's test vector ("Message envelope specification"), computed
/// independently with Python's `hmac` and `hashlib`.
const PAIR_KEY: &str = "1b295b763936bafb2f98d8f48924ab75bcdf7942b790a6a43ba5ec2e32203f29";
const SIGNED: &str = "77617264656e2d6132612d76310100217370696666653a2f2f77617264656e2e6c6f63616c2f6167656e742f636f64657200247370696666653a2f2f77617264656e2e6c6f63616c2f6167656e742f72657669657765720000019d3a52d47b00112233445566778899aabbccddeeff00000000000785c8000a746578742f706c61696e122f802d8280c4ee797df077865c4ccbaf3363642e8ff3669b1ce61a44ef4a55";
const MAC: &str = "77cade915e411f015428ca8a43c5e3fab897f3bd1131f13d89364312a6ee2d86";

fn vector() -> (MasterKey, Envelope) {
    let master = MasterKey::new(&(0u8..32).collect::<Vec<_>>()).unwrap();
    let env = Envelope {
        sender: SpiffeId::parse("spiffe://warden.local/agent/coder").unwrap(),
        recipient: SpiffeId::parse("spiffe://warden.local/agent/reviewer").unwrap(),
        timestamp_ms: 1_774_800_000_123,
        nonce: hex("00112233445566778899aabbccddeeff").try_into().unwrap(),
        key_id: epoch_of(1_774_800_000_123, 3_600_000),
        content_type: "text/plain".into(),
        payload: b"please review PR 42".to_vec(),
        mac: [0; MAC_BYTES],
    };
    (master, env)
}

#[test]
fn the_readme_test_vector_verifies() {
    let (master, env) = vector();
    assert_eq!(env.key_id, 493_000);
    let key = master.pair_key(&env.sender, &env.recipient, 3_600_000, env.key_id);
    assert_eq!(key.as_bytes().to_vec(), hex(PAIR_KEY));
    assert_eq!(env.signed_bytes(), hex(SIGNED));
    let signed = env.sign(&key);
    assert_eq!(signed.mac.to_vec(), hex(MAC));
    assert!(signed.mac_verifies(&key));
}

#[test]
fn any_changed_field_breaks_the_mac() {
    let (master, env) = vector();
    let key = master.pair_key(&env.sender, &env.recipient, 3_600_000, env.key_id);
    let good = env.sign(&key);
    let other = SpiffeId::parse("spiffe://warden.local/agent/deployer").unwrap();
    let mut changes: Vec<Envelope> = Vec::new();
    let mut e = good.clone();
    e.payload[0] ^= 1;
    changes.push(e);
    let mut e = good.clone();
    e.sender = other.clone();
    changes.push(e);
    let mut e = good.clone();
    e.recipient = other;
    changes.push(e);
    let mut e = good.clone();
    e.timestamp_ms += 1;
    changes.push(e);
    let mut e = good.clone();
    e.nonce[15] ^= 1;
    changes.push(e);
    let mut e = good.clone();
    e.key_id += 1;
    changes.push(e);
    let mut e = good.clone();
    e.content_type = "text/html".into();
    changes.push(e);
    let mut e = good.clone();
    e.mac[0] ^= 1;
    changes.push(e);
    for (i, e) in changes.iter().enumerate() {
        assert!(!e.mac_verifies(&key), "change {i} went unnoticed");
    }
    // Another pair's key, or another epoch's, does not verify.
    let b = master.pair_key(&good.recipient, &good.sender, 3_600_000, good.key_id);
    assert!(!good.mac_verifies(&b));
    let c = master.pair_key(&good.sender, &good.recipient, 3_600_000, good.key_id + 1);
    assert!(!good.mac_verifies(&c));
    assert!(good.mac_verifies(&key));
}

#[test]
fn malformed_envelopes_are_refused_before_any_check() {
    let (master, env) = vector();
    let key = master.pair_key(&env.sender, &env.recipient, 3_600_000, env.key_id);
    let wire = pb::Envelope::from(&env.sign(&key));
    assert!(Envelope::try_from(&wire).is_ok());
    let bad = |f: &dyn Fn(&mut pb::Envelope)| {
        let mut w = wire.clone();
        f(&mut w);
        Envelope::try_from(&w).unwrap_err()
    };
    assert_eq!(bad(&|w| w.version = 2), Malformed::Version(2));
    assert!(matches!(
        bad(&|w| w.sender = "coder".into()),
        Malformed::Id {
            field: "sender",
            ..
        }
    ));
    assert!(matches!(
        bad(&|w| w.nonce.pop().map_or((), drop)),
        Malformed::Size { field: "nonce", .. }
    ));
    assert!(matches!(
        bad(&|w| w.mac.clear()),
        Malformed::Size { field: "mac", .. }
    ));
    assert!(matches!(
        bad(&|w| w.payload = vec![0; MAX_PAYLOAD_BYTES + 1]),
        Malformed::Size {
            field: "payload",
            ..
        }
    ));
    assert!(format!("{:?}", MasterKey::new(&[7; 32]).unwrap()).contains("redacted"));
    assert!(format!("{key:?}").contains("redacted"));
    assert!(MasterKey::new(&[7; 16]).is_none());
}

#[test]
fn the_readme_states_this_test_vector() {
    let readme = include_str!("../../../README.md");
    let spec = &readme[readme
        .find("### Message envelope specification")
        .expect("the README has the specification")..];
    // The README wraps long hex lines; compare without whitespace.
    let flat: String = spec.chars().filter(|c| !c.is_whitespace()).collect();
    for (name, value) in [("pair key", PAIR_KEY), ("M", SIGNED), ("mac", MAC)] {
        assert!(
            flat.contains(value),
            "the README's {name} differs from the tested vector"
        );
    }
}
