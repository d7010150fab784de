pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod key;
pub mod model;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod verify;

pub mod proto {
    tonic::include_proto!("keygate.v1");
}
