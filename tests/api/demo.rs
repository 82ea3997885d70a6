//! The README's first command: `demo` runs the whole flow and tells it as a clean narrative.

#[tokio::test]
async fn the_demo_succeeds_and_its_narrative_holds_no_log_lines_or_colour_codes() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sym-circleci-approver"))
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
