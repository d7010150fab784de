pub mod key;

pub mod proto {
    tonic::include_proto!("keygate.v1");
}
