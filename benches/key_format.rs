//! What a credential costs before any store access: parsing and rejecting a random string
//! (the cost a scanner or a flood of garbage imposes), against one full argon2id verify with
//! the default parameters (the cost a cache miss imposes).

use criterion::{Criterion, criterion_group, criterion_main};
use keygate::key::format::{Alphabet, Profiles, default_profile};
use keygate::key::hash::{Argon2Config, SecretHasher};

fn parse_and_reject(c: &mut Criterion) {
    let profiles = Profiles::new(vec![default_profile()], "kg_live").unwrap();
    let garbage = format!("kg_live_{}", &*Alphabet::Base62.random(61));
    let valid = default_profile().issue("AAAAAAAAAAAA");
    c.bench_function("parse: reject random key-shaped string", |b| {
        b.iter(|| profiles.parse(std::hint::black_box(&garbage)).is_err())
    });
    c.bench_function("parse: accept valid key", |b| {
        b.iter(|| profiles.parse(std::hint::black_box(valid.text())).is_ok())
    });
}

fn argon2_verify(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let hasher = SecretHasher::new(&Argon2Config::default()).unwrap();
    let key = default_profile().issue("AAAAAAAAAAAA");
    let phc = runtime.block_on(hasher.hash(key.text())).unwrap();
    let mut group = c.benchmark_group("argon2id");
    group.sample_size(20);
    group.bench_function("verify (m=19456 KiB, t=2, p=1)", |b| {
        b.iter(|| runtime.block_on(hasher.verify(&phc, key.text())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, parse_and_reject, argon2_verify);
criterion_main!(benches);
