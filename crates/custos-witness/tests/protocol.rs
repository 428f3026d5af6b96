//! The witness against C2SP tlog-witness: every answer the spec names,
//! through the HTTP router, over a real ledger's checkpoints and proofs;
//! its state survives a restart; and the log's collector against live
//! witnesses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use custos_ledger::witness_wire::AddCheckpoint;
use custos_ledger::{
    Decision, Entry, Ledger, LedgerConfig, LedgerReader, NoteSigner, WitnessKey, WitnessPolicy,
};
use custos_witness::serve::router;
use custos_witness::{Witness, WitnessDir};
use ed25519_dalek::SigningKey;
use tower::ServiceExt as _;

const ORIGIN: &str = "test.custos.local/witnessed";

fn config(dir: &Path) -> LedgerConfig {
    LedgerConfig {
        dir: dir.to_owned(),
        origin: ORIGIN.into(),
        signing_key: SigningKey::from_bytes(&[42; 32]),
        next_key: None,
        checkpoint_interval: Duration::from_millis(200),
        faults: custos_ledger::FaultPlan::default(),
    }
}

/// Appends `n` entries to the ledger in `dir` (closing it, so its
/// checkpoint covers them).
fn grow(dir: &Path, n: u64) {
    let ledger = Ledger::open(config(dir)).unwrap();
    for i in 0..n {
        let e = Entry::new(
            1_700_000_000_000_000 + i as i64,
            "t",
            "test.append",
            Decision::Recorded,
        )
        .with_count("i", i);
        ledger.append(&e).unwrap();
    }
    ledger.close().unwrap();
}

struct Setup {
    _tmp: tempfile::TempDir,
    ledger: PathBuf,
    witness: PathBuf,
    log_key: String,
    witness_key: WitnessKey,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let ledger = tmp.path().join("ledger");
    grow(&ledger, 5);
    let log_key = NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[42; 32])).verifier_key();
    let witness = tmp.path().join("witness");
    let (_, witness_key) =
        WitnessDir::init(&witness, "witness.test/w1", std::slice::from_ref(&log_key)).unwrap();
    Setup {
        _tmp: tmp,
        ledger,
        witness,
        log_key,
        witness_key,
    }
}

fn load(path: &Path) -> Arc<Witness> {
    Arc::new(Witness::load(WitnessDir::open(path).unwrap()).unwrap())
}

async fn post(witness: &Arc<Witness>, body: Vec<u8>) -> (StatusCode, Option<String>, Vec<u8>) {
    let response = router(witness.clone())
        .oneshot(
            Request::post("/add-checkpoint")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec();
    (status, content_type, bytes)
}

fn request(ledger: &Path, key: &str, old: u64) -> Vec<u8> {
    let reader = LedgerReader::new(ledger);
    let latest = reader.latest(key).unwrap();
    let proof = if old == 0 || old == latest.size {
        Vec::new()
    } else {
        reader
            .consistency_proof(old, latest.size, latest.size)
            .unwrap()
            .proof
            .iter()
            .map(|h| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out).unwrap();
                out
            })
            .collect()
    };
    AddCheckpoint {
        old,
        proof,
        note: latest.note,
    }
    .encode()
}

#[tokio::test]
async fn every_answer_of_the_spec() {
    let s = setup();
    let w = load(&s.witness);
    let body = request(&s.ledger, &s.log_key, 0);

    // 200: cosignature lines that verify with the witness's key.
    let (status, _, lines) = post(&w, body.clone()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&lines)
    );
    let sigs = custos_ledger::witness_wire::parse_cosignatures(&lines).unwrap();
    let note = LedgerReader::new(&s.ledger)
        .latest(&s.log_key)
        .unwrap()
        .note;
    let text = signed_note::Note::from_bytes(&note)
        .unwrap()
        .text()
        .to_vec();
    assert!(s.witness_key.check(&text, sigs[0].signature()).is_some());

    // 409 with text/x.tlog.size: `old` is not the size it last cosigned.
    let (status, ctype, size) = post(&w, body.clone()).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(ctype.as_deref(), Some("text/x.tlog.size"));
    assert_eq!(size, b"5\n");

    // 200 again from the right size with an empty proof (same checkpoint).
    let (status, _, _) = post(&w, request(&s.ledger, &s.log_key, 5)).await;
    assert_eq!(status, StatusCode::OK);

    // The log grows; 200 with a good proof from 5.
    grow(&s.ledger, 300);
    let (status, _, _) = post(&w, request(&s.ledger, &s.log_key, 5)).await;
    assert_eq!(status, StatusCode::OK);

    // 422: a proof that does not verify.
    grow(&s.ledger, 7);
    let mut bad = AddCheckpoint::parse(&request(&s.ledger, &s.log_key, 305)).unwrap();
    bad.proof[0][0] ^= 1;
    let (status, _, _) = post(&w, bad.encode()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // 409: same size, another root (a rewrite re-signed with the log key).
    let forged = NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[42; 32]))
        .sign(305, [0xAB; 32])
        .unwrap();
    let same = AddCheckpoint {
        old: 305,
        proof: vec![],
        note: forged.clone(),
    };
    let (status, _, size) = post(&w, same.encode()).await;
    assert_eq!(
        (status, size.as_slice()),
        (StatusCode::CONFLICT, &b"305\n"[..])
    );

    // 400: old above the checkpoint's size; and a malformed body.
    let above = AddCheckpoint {
        old: 306,
        proof: vec![],
        note: forged,
    };
    assert_eq!(post(&w, above.encode()).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(
        post(&w, b"old x\n\nnope".to_vec()).await.0,
        StatusCode::BAD_REQUEST
    );

    // 404: a log it does not follow.
    let other = NoteSigner::new("other.example/log", SigningKey::from_bytes(&[1; 32]))
        .sign(1, [1; 32])
        .unwrap();
    let unknown = AddCheckpoint {
        old: 0,
        proof: vec![],
        note: other,
    };
    assert_eq!(post(&w, unknown.encode()).await.0, StatusCode::NOT_FOUND);

    // 403: the right origin signed by a key it does not trust.
    let impostor = NoteSigner::new(ORIGIN, SigningKey::from_bytes(&[9; 32]))
        .sign(400, [2; 32])
        .unwrap();
    let untrusted = AddCheckpoint {
        old: 305,
        proof: vec![],
        note: impostor,
    };
    assert_eq!(post(&w, untrusted.encode()).await.0, StatusCode::FORBIDDEN);

    // The state is durable: a restarted witness still holds 305.
    drop(w);
    let again = load(&s.witness);
    let (status, _, size) = post(&again, request(&s.ledger, &s.log_key, 0)).await;
    assert_eq!(
        (status, size.as_slice()),
        (StatusCode::CONFLICT, &b"305\n"[..])
    );
}

/// Two submissions racing from the same old size: exactly one is cosigned
/// and the witness never goes back to the smaller size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_submissions_never_roll_back() {
    let s = setup();
    let w = load(&s.witness);
    let small = request(&s.ledger, &s.log_key, 0);
    grow(&s.ledger, 50);
    let large = request(&s.ledger, &s.log_key, 0);
    let (a, b) = tokio::join!(post(&w, small), post(&w, large));
    let oks = [a.0, b.0].iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(oks, 1, "{:?} {:?}", a.0, b.0);
    let (_, _, size) = post(&w, request(&s.ledger, &s.log_key, 0)).await;
    let held: u64 = String::from_utf8(size).unwrap().trim().parse().unwrap();
    let expected = if a.0 == StatusCode::OK { 5 } else { 55 };
    assert_eq!(held, expected);
    // The smaller checkpoint can no longer be cosigned after the larger.
    if held == 55 {
        let again = AddCheckpoint {
            old: 55,
            ..AddCheckpoint::parse(&request(&s.ledger, &s.log_key, 0)).unwrap()
        };
        assert_eq!(post(&w, again.encode()).await.0, StatusCode::OK);
    }
}

/// The collector against three live witnesses on loopback, with a 2-of-3
/// quorum: one down delays nothing, two down withhold the witnessed
/// checkpoint, and a witness whose state is ahead (a rolled-back log)
/// refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_reaches_a_quorum_and_records_failures() {
    let s = setup();
    let mut policy = String::new();
    let mut stops = Vec::new();
    for (i, name) in ["w1", "w2", "w3"].iter().enumerate() {
        let dir = s._tmp.path().join(format!("wit-{name}"));
        let (_, key) = WitnessDir::init(
            &dir,
            &format!("witness.test/{name}"),
            std::slice::from_ref(&s.log_key),
        )
        .unwrap();
        let url = if i < 2 {
            let server = custos_witness::serve::WitnessServer::bind(
                Witness::load(WitnessDir::open(&dir).unwrap()).unwrap(),
                "127.0.0.1:0".parse().unwrap(),
            )
            .await
            .unwrap();
            let url = format!("http://{}", server.local_addr().unwrap());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(server.run(async {
                let _ = rx.await;
            }));
            stops.push(tx);
            url
        } else {
            // w3 is down: nothing listens there.
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", free.local_addr().unwrap());
            drop(free);
            url
        };
        policy += &format!("witness {} {} {url}\n", key.name(), key.hex());
    }
    policy += "group q 2 witness.test/w1 witness.test/w2 witness.test/w3\nquorum q\n";
    let policy = WitnessPolicy::parse(&policy).unwrap();
    let collector = custos_witness::Collector::new(&s.ledger, &s.log_key, policy.clone()).unwrap();
    let report = collector.round().await.unwrap();
    assert!(report.published, "{report:?}");
    assert_eq!(
        report.cosigned.keys().cloned().collect::<BTreeSet<_>>(),
        ["witness.test/w1", "witness.test/w2"]
            .map(String::from)
            .into()
    );
    assert!(report.failed["witness.test/w3"].contains("connection"));
    let note = custos_ledger::witnessed::read_witnessed(&s.ledger)
        .unwrap()
        .unwrap();
    let w = custos_ledger::verify_witnessed(&note, &s.log_key, &policy).unwrap();
    assert_eq!(w.checkpoint.size, 5);

    // The log grows; w2 goes down: the quorum fails, the witnessed
    // checkpoint stays at 5, and the failure is recorded.
    grow(&s.ledger, 20);
    let _ = stops.pop().unwrap().send(());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = collector.round().await.unwrap();
    assert!(!report.published);
    let state = custos_ledger::witnessed::read_state(&s.ledger).unwrap();
    assert_eq!(state["witness.test/w1"].size, 25);
    assert!(state["witness.test/w2"].last_error.is_some());
    let note = custos_ledger::witnessed::read_witnessed(&s.ledger)
        .unwrap()
        .unwrap();
    let w = custos_ledger::verify_witnessed(&note, &s.log_key, &policy).unwrap();
    assert_eq!(w.checkpoint.size, 5);
}
