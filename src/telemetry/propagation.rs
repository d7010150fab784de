//! W3C trace context (`traceparent`, `tracestate`) read from a request, so keygate's spans
//! join the caller's trace.

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;

/// The remote span context in the headers `get` reads (by lower-case name), if they carry a
/// valid one.
pub fn remote_parent<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Context> {
    struct Headers<'a, F>(F, std::marker::PhantomData<&'a str>);
    impl<'a, F: Fn(&str) -> Option<&'a str>> Extractor for Headers<'a, F> {
        fn get(&self, key: &str) -> Option<&str> {
            (self.0)(key)
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let context = TraceContextPropagator::new().extract(&Headers(get, std::marker::PhantomData));
    context.span().span_context().is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_read_and_garbage_is_not() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = remote_parent(|name| (name == "traceparent").then_some(header)).unwrap();
        let span = context.span().span_context().clone();
        assert_eq!(
            span.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_remote());
        assert!(remote_parent(|name| (name == "traceparent").then_some("00-zz-00-01")).is_none());
        assert!(remote_parent(|_| None).is_none());
    }
}
