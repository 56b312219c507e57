//! Rebuild when a migration is added or changed: `sqlx::migrate!` embeds the directory, and cargo
//! does not otherwise know to look at it (sqlx's documented recipe).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
