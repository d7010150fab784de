pub mod clock;
pub mod error;
pub mod key;
pub mod model;
pub mod store;

pub mod proto {
    tonic::include_proto!("keygate.v1");
}
