#![allow(unreachable_pub)] // test-only helpers shared between modules
//! Integration tests: the real `gateway` binary on ephemeral ports in front of real HTTP
//! upstreams and a JWKS server, driven over real TCP.

mod admin;
mod auth;
mod common;
mod connections;
mod failures;
mod hardening;
mod policy_cli;
mod ratelimit;
mod raw_upstream;
mod reload;
mod resilience;
mod routing;
mod shadow;
mod tls;
mod tracing;
