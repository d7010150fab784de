//! Check's answer on the wire. An allow for a warm key repeats the same bytes every time:
//! the key's identity headers, the credential headers to remove and its dynamic metadata
//! depend only on the key's identity and the configuration. Those parts are encoded once per
//! key and identity and shared by reference; only the rate-limit headers, which change from
//! one request to the next, are encoded per answer.

use std::fmt::Write as _;
use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::DefaultHashBuilder;

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};

use super::check_wire::{CheckResponse, HeaderValueOption, RpcStatus};
use crate::authz::decision::Identity;
use crate::ratelimit::{HeaderValue, RateLimitConfig, RateOutcome};
use crate::slots::Slots;

/// Slots for kept allow answers ([`Slots`]): about half a kilobyte each, 8 MiB at most.
const ANSWER_SLOTS: usize = 16_384;

/// What Check answers: a message built for this request, or an allow made of a key's
/// encoded parts and this request's rate-limit headers. Both encode to the same bytes as
/// the same answer built in full.
#[derive(Debug)]
pub enum CheckAnswer {
    /// An answer built in full.
    Built(CheckResponse),
    /// An allow.
    Allow {
        /// The parts that depend on the key's identity alone.
        parts: Arc<AllowParts>,
        /// Headers for the client's response (rate-limit state).
        client: ClientHeaders,
    },
}

/// Headers for the client's response (`OkHttpResponse.response_headers_to_add`), each
/// replacing any of its name, encoded as they are added: the same bytes as
/// [`HeaderValueOption::overwrite`] of each, without a string or message built for one.
#[derive(Debug, Default)]
pub struct ClientHeaders(Vec<u8>);

/// `OkHttpResponse.response_headers_to_add`.
const CLIENT_HEADERS_FIELD: u32 = 6;

impl ClientHeaders {
    /// The rate-limit headers of `rate` (none without one), as `config` writes them.
    pub fn of_rate(rate: Option<&RateOutcome>, config: &RateLimitConfig) -> Self {
        let mut headers = ClientHeaders::default();
        if let Some(rate) = rate {
            // Room for the usual three headers, and for a value, at once.
            headers.0.reserve(192);
            let mut number = itoa::Buffer::new();
            let mut text = String::new();
            rate.each_header(config, |name, value| match value {
                HeaderValue::Count(n) => headers.overwrite(name, number.format(n)),
                HeaderValue::Seconds(n) => headers.overwrite(name, number.format(n)),
                HeaderValue::Text(parts) => {
                    text.clear();
                    let _ = text.write_fmt(parts);
                    headers.overwrite(name, &text);
                }
            });
        }
        headers
    }

    /// Adds `name: value`, replacing any header of that name.
    fn overwrite(&mut self, name: &str, value: &str) {
        // Protobuf leaves an empty text out.
        let text_len = |text: &str| match text.len() {
            0 => 0,
            len => delimited_len(len),
        };
        let header_len = text_len(name) + text_len(value);
        // The header (1), then `append_action` (3), OVERWRITE_IF_EXISTS_OR_ADD: two bytes.
        let option_len = delimited_len(header_len) + 2;
        let buf = &mut self.0;
        encoding::encode_key(CLIENT_HEADERS_FIELD, WireType::LengthDelimited, buf);
        encoding::encode_varint(option_len as u64, buf);
        encoding::encode_key(1, WireType::LengthDelimited, buf);
        encoding::encode_varint(header_len as u64, buf);
        for (tag, text) in [(1, name), (2, value)] {
            if !text.is_empty() {
                encoding::encode_key(tag, WireType::LengthDelimited, buf);
                encoding::encode_varint(text.len() as u64, buf);
                buf.put_slice(text.as_bytes());
            }
        }
        encoding::encode_key(3, WireType::Varint, buf);
        encoding::encode_varint(HeaderValueOption::OVERWRITE_IF_EXISTS_OR_ADD as u64, buf);
    }
}

/// The encoded length of a length-delimited field of `len` bytes under a one-byte key.
fn delimited_len(len: usize) -> usize {
    1 + encoding::encoded_len_varint(len as u64) + len
}

/// The encoded parts of a key's allow answer, and the identity they were made for.
#[derive(Debug)]
pub struct AllowParts {
    key_id: String,
    owner_id: String,
    plan: String,
    scopes: Vec<String>,
    /// `OkHttpResponse` fields 2 (identity headers) and 5 (headers to remove), encoded.
    upstream: Bytes,
    /// The `dynamic_metadata` Struct, encoded.
    metadata: Bytes,
}

impl AllowParts {
    /// The parts of `allow`, an allow answer built in full without client headers, made for
    /// `identity`.
    pub fn of(identity: &Identity, allow: &CheckResponse) -> Self {
        let encoded = |message: Option<Vec<u8>>| Bytes::from(message.unwrap_or_default());
        AllowParts {
            key_id: identity.key_id().to_owned(),
            owner_id: identity.owner_id().to_owned(),
            plan: identity.plan().to_owned(),
            scopes: identity.scopes().map(str::to_owned).collect(),
            upstream: encoded(allow.ok_response.as_ref().map(Message::encode_to_vec)),
            metadata: encoded(allow.dynamic_metadata.as_ref().map(Message::encode_to_vec)),
        }
    }

    /// Whether these parts were made for `identity`.
    fn made_for(&self, identity: &Identity) -> bool {
        self.key_id == identity.key_id()
            && self.owner_id == identity.owner_id()
            && self.plan == identity.plan()
            && self.scopes.iter().map(String::as_str).eq(identity.scopes())
    }

    /// The length of `ok_response` with `client` headers.
    fn ok_len(&self, client: &ClientHeaders) -> usize {
        self.upstream.len() + client.0.len()
    }
}

/// The allow parts of the keys Check answered lately, each in its key id's slot.
pub struct AllowAnswers {
    slots: Slots<AllowParts>,
    /// Key ids are keygate's own, not a client's: a fast hash, seeded at random.
    hasher: DefaultHashBuilder,
}

impl Default for AllowAnswers {
    fn default() -> Self {
        AllowAnswers {
            slots: Slots::new(ANSWER_SLOTS),
            hasher: DefaultHashBuilder::default(),
        }
    }
}

impl AllowAnswers {
    /// The parts for `identity`, kept or made with `build` (an allow answer built in full
    /// without client headers) and kept.
    pub fn parts(
        &self,
        identity: &Identity,
        build: impl FnOnce() -> CheckResponse,
    ) -> Arc<AllowParts> {
        let hash = self.hasher.hash_one(identity.key_id());
        if let Some(parts) = self.slots.get(hash, |parts| parts.made_for(identity)) {
            return parts;
        }
        let parts = Arc::new(AllowParts::of(identity, &build()));
        self.slots.put(hash, parts.clone());
        parts
    }
}

/// `CheckResponse.status` (1), `ok_response` (3), `dynamic_metadata` (4), as prost writes
/// them: in field order.
impl Message for CheckAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            CheckAnswer::Built(response) => response.encode_raw(buf),
            CheckAnswer::Allow { parts, client } => {
                encoding::message::encode(1, &RpcStatus::default(), buf);
                encoding::encode_key(3, WireType::LengthDelimited, buf);
                encoding::encode_varint(parts.ok_len(client) as u64, buf);
                buf.put_slice(&parts.upstream);
                buf.put_slice(&client.0);
                encoding::encode_key(4, WireType::LengthDelimited, buf);
                encoding::encode_varint(parts.metadata.len() as u64, buf);
                buf.put_slice(&parts.metadata);
            }
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // An answer is only ever written; reading one back skips what it holds.
        encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            CheckAnswer::Built(response) => response.encoded_len(),
            CheckAnswer::Allow { parts, client } => {
                encoding::message::encoded_len(1, &RpcStatus::default())
                    + delimited_len(parts.ok_len(client))
                    + delimited_len(parts.metadata.len())
            }
        }
    }

    fn clear(&mut self) {
        *self = CheckAnswer::Built(CheckResponse::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::keys::{CachedKey, Standing};
    use crate::model::testing::key_record;
    use crate::service::check_wire::{OkHttpResponse, Struct};

    /// The key `id` with `scopes` under `plan`.
    fn identity_of(id: &str, plan: &str, scopes: &[&str]) -> Identity {
        let mut record = key_record(id, "own_1");
        record.scopes = scopes.iter().map(|s| s.to_string()).collect();
        let standing = Standing {
            owner: None,
            plan: plan.into(),
            plan_config: None,
        };
        Identity::new(Arc::new(CachedKey::verified(&record)), Arc::new(standing))
    }

    fn identity(plan: &str) -> Identity {
        identity_of("AAAAAAAAAAAA", plan, &["read", "write"])
    }

    /// An allow for `identity` built in full, with `client` headers.
    fn built(identity: &Identity, client: Vec<HeaderValueOption>) -> CheckResponse {
        let header =
            |name: &str, value: &str| HeaderValueOption::overwrite(name.into(), value.into());
        CheckResponse {
            status: Some(RpcStatus::default()),
            ok_response: Some(OkHttpResponse {
                headers: vec![
                    header("x-keygate-key-id", identity.key_id()),
                    header("x-keygate-plan", identity.plan()),
                ],
                headers_to_remove: vec!["authorization".into(), "x-api-key".into()],
                response_headers_to_add: client,
            }),
            dynamic_metadata: Some(Struct::of_strings(&[
                ("code", "OK"),
                ("plan", identity.plan()),
            ])),
            ..CheckResponse::default()
        }
    }

    #[test]
    fn an_allow_from_kept_parts_is_the_allow_built_in_full() {
        let identity = identity("pro");
        let parts = Arc::new(AllowParts::of(&identity, &built(&identity, vec![])));
        let long = "7".repeat(200);
        for client in [
            vec![],
            vec![("ratelimit-limit", "100"), ("ratelimit-remaining", "99")],
            // Empty texts are left out, as protobuf leaves them; a long one takes a
            // two-byte length.
            vec![
                ("x-empty", ""),
                ("", "no name"),
                ("ratelimit-policy", &long),
            ],
        ] {
            let options = client
                .iter()
                .map(|(name, value)| {
                    HeaderValueOption::overwrite(name.to_string(), value.to_string())
                })
                .collect();
            let full = built(&identity, options).encode_to_vec();
            let mut headers = ClientHeaders::default();
            for (name, value) in &client {
                headers.overwrite(name, value);
            }
            let answer = CheckAnswer::Allow {
                parts: parts.clone(),
                client: headers,
            };
            assert_eq!(answer.encode_to_vec(), full);
            assert_eq!(answer.encoded_len(), full.len());
        }
    }

    #[test]
    fn an_allow_carries_the_rate_headers_every_other_answer_carries() {
        use crate::ratelimit::window::WindowState;
        use crate::ratelimit::{DecidedBy, RateOutcome};
        let now = 1_700_000_000_250;
        let rate = RateOutcome {
            allowed: true,
            windows: vec![WindowState::new(10, 1_000, 7, now - 500, now, None, true)],
            quotas: Vec::new(),
            credits: None,
            now,
            decided_by: DecidedBy::Local,
        };
        let config = RateLimitConfig {
            ietf_headers: true,
            ..RateLimitConfig::default()
        };
        let identity = identity("pro");
        let parts = Arc::new(AllowParts::of(&identity, &built(&identity, vec![])));
        let answer = CheckAnswer::Allow {
            parts,
            client: ClientHeaders::of_rate(Some(&rate), &config),
        };
        let options = rate
            .headers(&config)
            .into_iter()
            .map(|(name, value)| HeaderValueOption::overwrite(name, value))
            .collect();
        assert_eq!(
            answer.encode_to_vec(),
            built(&identity, options).encode_to_vec()
        );
    }

    #[test]
    fn kept_parts_serve_only_the_identity_they_were_made_for() {
        let answers = AllowAnswers::default();
        let pro = identity("pro");
        let first = answers.parts(&pro, || built(&pro, vec![]));
        let again = answers.parts(&pro, || panic!("the kept parts answer"));
        assert!(Arc::ptr_eq(&first, &again));

        let free = identity("free");
        let changed = answers.parts(&free, || built(&free, vec![]));
        let answer = CheckAnswer::Allow {
            parts: changed,
            client: ClientHeaders::default(),
        };
        assert_eq!(answer.encode_to_vec(), built(&free, vec![]).encode_to_vec());
        let rescoped = identity_of("AAAAAAAAAAAA", "free", &["read"]);
        let mut rebuilt = false;
        answers.parts(&rescoped, || {
            rebuilt = true;
            built(&rescoped, vec![])
        });
        assert!(rebuilt, "other scopes are another identity");

        // Every key, whatever slot it shares, is answered with its own id.
        for i in 0..2 * ANSWER_SLOTS {
            let other = identity_of(&format!("K{i:011}"), "free", &["read"]);
            let parts = answers.parts(&other, || built(&other, vec![]));
            let answer = CheckAnswer::Allow {
                parts,
                client: ClientHeaders::default(),
            };
            assert_eq!(
                answer.encode_to_vec(),
                built(&other, vec![]).encode_to_vec()
            );
        }
    }
}
