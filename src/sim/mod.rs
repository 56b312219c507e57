//! Faithful local fakes of the four providers (Facebook Graph, Stripe, Resend, Google Drive) with
//! fault injection, used by the integration tests and by `baseaim-worker demo`. Depends on nothing
//! else in this crate.
