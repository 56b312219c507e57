//! One client per external provider (`facebook`, `stripe`, `resend`, `google_drive`), each with a
//! configurable base URL and timeouts, and an `error.rs` that classifies failures once as retry,
//! snooze-until, permanent or auth. Integrations know nothing about jobs or the queue.

pub mod drive;
pub mod facebook;
pub mod resend;

pub mod stripe;
