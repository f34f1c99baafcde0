//! The `dialer` command line: parse, load configuration, call into the library,
//! map errors to exit codes (0 ok, 1 runtime failure, 2 bad usage or configuration,
//! 3 input file had rejected rows).

use clap::{Parser, Subcommand};
use dialer::cli::{self, CliError, EXIT_OK};
use dialer::clock::Clock;
use dialer::config::{Settings, Sources};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dialer",
    version,
    about = "Outbound-call worker for RevDesk with local pre-flight compliance"
)]
struct Cli {
    /// Configuration file (layered over config/default.toml; DIALER__SECTION__KEY env wins).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the embedded migrations to database.url.
    Migrate,
    /// Create, update and operate campaigns.
    #[command(subcommand)]
    Campaign(CampaignCmd),
    /// Load contacts, DNC lists, opt-outs and consent records.
    #[command(subcommand)]
    Import(ImportCmd),
    /// The long-running worker: claims and dials, serves webhooks, metrics and probes.
    Run {
        /// Start the worker's clock at this instant (RFC 3339): for tests and demos,
        /// so that calling windows behave the same at any hour. Never in production.
        #[arg(long, hide = true)]
        fake_now: Option<String>,
    },
    /// Run the RevDesk simulator (for the demo, tests and load runs).
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Scenario file (see config/simulator.example.toml); none: accept everything.
        #[arg(long)]
        scenario: Option<PathBuf>,
        /// Start the simulator's clock at this instant (RFC 3339), to pair with
        /// `dialer run --fake-now` (webhook signatures carry the time).
        #[arg(long, hide = true)]
        fake_now: Option<String>,
    },
    /// Explain the pre-flight verdict for one number.
    Check {
        phone: String,
        #[arg(long)]
        campaign: Option<String>,
        /// The instant to check (RFC 3339); default now.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        timezone: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The pre-flight verdict for every row of a contacts file (streamed).
    Scrub {
        file: PathBuf,
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        at: Option<String>,
        #[arg(long, value_enum, default_value = "csv")]
        format: ScrubFormat,
    },
    /// A guided tour: sample campaigns against the built-in simulator, on a fixed clock.
    Demo {
        /// Print the summary as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Jobs per state and final reason, attempts, account halts.
    Status {
        #[arg(long)]
        campaign: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ScrubFormat {
    Csv,
    Jsonl,
}

#[derive(Subcommand)]
enum CampaignCmd {
    /// Create or update a campaign from a TOML file (idempotent).
    Apply { file: PathBuf },
    /// List campaigns and their state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop claiming a campaign's jobs until `resume`.
    Pause { name: String },
    /// Lift a pause (the operator's and any automatic one).
    Resume { name: String },
    /// Put jobs dropped for a reason that may not be the contact's back in the queue.
    Requeue {
        name: String,
        /// provider_failed, vendor_refused, idempotency_conflict or unexpected_response.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
enum ImportCmd {
    /// Contacts CSV: one job per new phone number in the campaign.
    Contacts {
        #[arg(long)]
        campaign: String,
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A Do-Not-Call list: one number per line, `areacode,number`, or `NPAXXXXXXX`.
    Dnc {
        file: PathBuf,
        #[arg(long, default_value = "dnc")]
        source: String,
        #[arg(long)]
        json: bool,
    },
    /// Opt-outs CSV: phone, campaign (blank = all), opted_out_at, source.
    OptOuts {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Consents CSV: phone, campaign, kind, granted_at, expires_at, revoked_at.
    Consents {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() {
                cli::EXIT_USAGE
            } else {
                EXIT_OK
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    one_malloc_arena();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(cli::EXIT_RUNTIME);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// One glibc malloc arena for the whole process. By default glibc gives threads
/// arenas of their own (up to 8 per core) and memory freed in one stays there: the
/// worker's peak RSS with 1,000 dials in flight was 78 MiB with the default and 71
/// with one arena, at no measured cost in dials/s (docs/benchmarks.md, Load). An
/// operator's own `MALLOC_ARENA_MAX` (a glibc setting, read by glibc) is left alone.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    let settings = Settings::load(&Sources::cli(cli.config.clone()))?;
    let clock = Clock::system();
    let now_ms = clock.now().timestamp_millis();
    match cli.command {
        Command::Migrate => {
            let store = cli::open_store(&settings, false).await?;
            store.migrate().await?;
            println!("migrations applied ({})", store.backend().as_str());
            Ok(EXIT_OK)
        }
        Command::Campaign(cmd) => {
            let store = cli::open_store(&settings, true).await?;
            match cmd {
                CampaignCmd::Apply { file } => {
                    let spec = dialer::campaign::CampaignSpec::load(&file)
                        .map_err(|e| CliError::Usage(e.to_string()))?;
                    let (row, created) = store.apply_campaign(&spec, now_ms).await?;
                    println!(
                        "campaign {} {} (call_type {}, require_consent {}, window {}-{} recipient local, days {})",
                        row.name,
                        if created { "created" } else { "updated" },
                        row.call_type,
                        spec.require_consent.label(),
                        row.window_start,
                        row.window_end,
                        row.days
                    );
                    Ok(EXIT_OK)
                }
                CampaignCmd::List { json } => {
                    let rows = store.campaigns().await?;
                    if json {
                        let v: Vec<_> = rows
                            .iter()
                            .map(|c| serde_json::json!({"name": c.name, "state": c.state_label(now_ms), "call_type": c.call_type,
                                "require_consent": c.require_consent, "window": format!("{}-{}", c.window_start, c.window_end), "days": c.days}))
                            .collect();
                        println!("{}", serde_json::Value::Array(v));
                    } else {
                        for c in rows {
                            println!(
                                "{}\t{}\t{}\t{}-{}\t{}",
                                c.name,
                                c.state_label(now_ms),
                                c.call_type,
                                c.window_start,
                                c.window_end,
                                c.days
                            );
                        }
                    }
                    Ok(EXIT_OK)
                }
                CampaignCmd::Requeue { name, reason } => {
                    // Only reasons that may not be the contact's can be undone: a DNC,
                    // opt-out or consent drop stays dropped.
                    const UNDOABLE: &[&str] = &[
                        "provider_failed",
                        "vendor_refused",
                        "idempotency_conflict",
                        "unexpected_response",
                    ];
                    if !UNDOABLE.contains(&reason.as_str()) {
                        return Err(CliError::Usage(format!(
                            "`{reason}` cannot be requeued; one of: {}",
                            UNDOABLE.join(", ")
                        )));
                    }
                    let c = store
                        .campaign(&name)
                        .await?
                        .ok_or_else(|| CliError::Usage(format!("unknown campaign `{name}`")))?;
                    let n = store.requeue_dropped(c.id, &reason, now_ms).await?;
                    println!("campaign {name}: {n} jobs dropped `{reason}` requeued");
                    Ok(EXIT_OK)
                }
                CampaignCmd::Pause { name } | CampaignCmd::Resume { name }
                    if store.campaign(&name).await?.is_none() =>
                {
                    Err(CliError::Usage(format!("unknown campaign `{name}`")))
                }
                CampaignCmd::Pause { name } => {
                    store.set_operator_pause(&name, true, now_ms).await?;
                    println!("campaign {name} paused");
                    Ok(EXIT_OK)
                }
                CampaignCmd::Resume { name } => {
                    store.set_operator_pause(&name, false, now_ms).await?;
                    println!("campaign {name} resumed");
                    Ok(EXIT_OK)
                }
            }
        }
        Command::Import(cmd) => {
            let store = cli::open_store(&settings, true).await?;
            match cmd {
                ImportCmd::Contacts {
                    campaign,
                    file,
                    json,
                } => {
                    let c = store
                        .campaign(&campaign)
                        .await?
                        .ok_or_else(|| CliError::Usage(format!("unknown campaign `{campaign}`")))?;
                    let p = cli::progress_for(&file, json);
                    let report =
                        dialer::import::import_contacts(&store, c.id, now_ms, &file, p).await?;
                    Ok(cli::finish_import("contacts", &report, json))
                }
                ImportCmd::Dnc { file, source, json } => {
                    let p = cli::progress_for(&file, json);
                    let report =
                        dialer::import::import_dnc(&store, &file, &source, now_ms, p).await?;
                    Ok(cli::finish_import("dnc", &report, json))
                }
                ImportCmd::OptOuts { file, json } => {
                    let p = cli::progress_for(&file, json);
                    let report = dialer::import::import_opt_outs(&store, &file, now_ms, p).await?;
                    Ok(cli::finish_import("opt-outs", &report, json))
                }
                ImportCmd::Consents { file, json } => {
                    let p = cli::progress_for(&file, json);
                    let report = dialer::import::import_consents(&store, &file, p).await?;
                    Ok(cli::finish_import("consents", &report, json))
                }
            }
        }
        Command::Run { fake_now } => {
            cli::init_logging(&settings);
            let clock = match fake_now {
                Some(t) => Clock::starting_at(cli::parse_at(Some(&t), &clock)?),
                None => clock,
            };
            let store = cli::open_store(&settings, settings.database.migrate_on_start).await?;
            let listener = tokio::net::TcpListener::bind(settings.listen_addr())
                .await
                .map_err(|e| {
                    CliError::Runtime(format!("cannot listen on {}: {e}", settings.http.listen))
                })?;
            let cancel = tokio_util::sync::CancellationToken::new();
            cli::cancel_on_signals(cancel.clone());
            let app =
                dialer::worker::build(settings, store, clock, cancel).map_err(|e| match e {
                    dialer::worker::StartError::Config(..) => CliError::Usage(e.to_string()),
                    dialer::worker::StartError::Runtime(m) => CliError::Runtime(m),
                })?;
            dialer::worker::serve(std::sync::Arc::new(app), listener, false)
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            Ok(EXIT_OK)
        }
        Command::Simulate {
            listen,
            scenario,
            fake_now,
        } => {
            let sim_clock = match fake_now {
                Some(t) => Clock::starting_at(cli::parse_at(Some(&t), &clock)?),
                None => clock.clone(),
            };
            cli::init_logging(&settings);
            let scenario = match scenario {
                Some(p) => dialer::simulator::Scenario::load(&p)
                    .map_err(|e| CliError::Usage(e.to_string()))?,
                None => dialer::simulator::Scenario::default(),
            };
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| CliError::Usage(format!("cannot listen on {listen}: {e}")))?;
            let cancel = tokio_util::sync::CancellationToken::new();
            cli::cancel_on_signals(cancel.clone());
            eprintln!(
                "simulator listening on http://{}",
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or(listen)
            );
            dialer::simulator::serve_with_clock(listener, scenario, sim_clock, cancel)
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            Ok(EXIT_OK)
        }
        Command::Check {
            phone,
            campaign,
            at,
            state,
            timezone,
            json,
        } => {
            let at = cli::parse_at(at.as_deref(), &clock)?;
            let store = cli::open_store(&settings, true).await?;
            let engine = dialer::compliance::Engine::new(&settings.compliance)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let args = dialer::scrub::CheckArgs {
                phone: &phone,
                campaign: campaign.as_deref(),
                at,
                state: state.as_deref(),
                timezone: timezone.as_deref(),
                json,
            };
            let text = dialer::scrub::check(&store, &settings, &engine, args)
                .await
                .map_err(cli::scrub_err)?;
            print!("{text}");
            Ok(EXIT_OK)
        }
        Command::Scrub {
            file,
            campaign,
            at,
            format,
        } => {
            let at = cli::parse_at(at.as_deref(), &clock)?;
            let store = cli::open_store(&settings, true).await?;
            let engine = dialer::compliance::Engine::new(&settings.compliance)
                .map_err(|e| CliError::Usage(e.to_string()))?;
            let format = match format {
                ScrubFormat::Csv => dialer::scrub::Format::Csv,
                ScrubFormat::Jsonl => dialer::scrub::Format::Jsonl,
            };
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout());
            dialer::scrub::scrub(
                &store,
                &settings,
                &engine,
                dialer::scrub::ScrubArgs {
                    path: &file,
                    campaign: campaign.as_deref(),
                    at,
                    format,
                },
                &mut out,
            )
            .await
            .map_err(cli::scrub_err)?;
            Ok(EXIT_OK)
        }
        Command::Demo { json } => {
            dialer::demo::init_logging();
            let summary = dialer::demo::run()
                .await
                .map_err(|e| CliError::Runtime(e.to_string()))?;
            if json {
                let text = serde_json::to_string_pretty(&summary)
                    .map_err(|e| CliError::Runtime(e.to_string()))?;
                println!("{text}");
            } else {
                print!("{}", dialer::demo::render(&summary));
            }
            Ok(EXIT_OK)
        }
        Command::Status { campaign, json } => {
            let store = cli::open_store(&settings, true).await?;
            let report = store.status(campaign.as_deref(), now_ms).await?;
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                print!("{}", cli::status_text(&report));
            }
            Ok(EXIT_OK)
        }
    }
}
