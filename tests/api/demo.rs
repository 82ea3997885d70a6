//! The README's first command: `demo` (the developer binary's, `cargo run` runs it) runs the
//! whole flow and tells it as a clean narrative; the service binary has no demo and no fakes.

#[tokio::test]
async fn the_demo_succeeds_and_its_narrative_holds_no_log_lines_or_colour_codes() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_approver-dev"))
        .arg("demo")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains('\u{1b}') && !stderr.contains('\u{1b}'),
        "{stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let (last, narrative) = lines.split_last().unwrap();
    assert!(
        last.starts_with("the service's log of this run: "),
        "{last}"
    );
    for line in narrative {
        assert!(line.starts_with('['), "not a narrative line: {line:?}");
    }
    assert!(stdout.contains("approved exactly once"), "{stdout}");
    assert!(stderr.trim().is_empty(), "{stderr}");
    // The log it names holds the service's lines, without colour codes.
    let log = std::fs::read_to_string(last.trim_start_matches("the service's log of this run: "))
        .unwrap();
    assert!(log.contains("listening") && !log.contains('\u{1b}'));
}

#[test]
fn the_service_binary_carries_no_test_double_and_no_demo() {
    let service = env!("CARGO_BIN_EXE_sym-circleci-approver");
    let dev = env!("CARGO_BIN_EXE_approver-dev");
    // grep reads a debug binary's hundreds of megabytes in a blink; a loop here would not.
    let holds = |binary: &str, what: &str| {
        std::process::Command::new("grep")
            .args(["-a", "-q", "-F", what, binary])
            .status()
            .expect("grep runs")
            .success()
    };
    // The fakes' source paths and the demo's narrative are in the developer binary only.
    for marker in ["fake_circleci", "fake_sym", "the hook's delivery is lost"] {
        assert!(
            holds(dev, marker),
            "the check is blind: {marker:?} not in approver-dev"
        );
        assert!(
            !holds(service, marker),
            "{marker:?} is in the service binary"
        );
    }
}

#[tokio::test]
async fn the_fake_circleci_refuses_a_calls_file_it_cannot_open_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("no-such-folder").join("calls.jsonl");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_approver-dev"))
        .args(["fake-circleci", "--listen", "127.0.0.1:0", "--calls-file"])
        .arg(&calls)
        .env("CIRCLECI_TOKEN", "test-token")
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&calls.display().to_string()) && stderr.contains("No such file"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).trim().is_empty());
}
