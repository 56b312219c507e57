use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = baseaim_worker::cli::Cli::parse();
    baseaim_worker::app::run(cli).await
}
