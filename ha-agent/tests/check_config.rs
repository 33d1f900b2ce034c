//! `ha-agent check-config` as an operator runs it: the shipped example
//! passes (exit 0, a summary), a broken file fails (exit 1) with the agent's
//! own message naming the field.

use std::process::Command;

fn check(file: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ha-agent"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("run ha-agent")
}

#[test]
fn the_example_passes_and_a_broken_file_fails_with_the_agents_message() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/config.example.toml");
    let out = check(&example);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(stdout.contains("VRRP instance"), "{stdout}");

    let dir = std::env::temp_dir().join(format!("ha-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let broken = dir.join("config.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    std::fs::write(&broken, text.replacen("vrid = 51", "vrid = 300", 1)).unwrap();
    let out = check(&broken);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr.contains("vrid"), "{stderr}");
    assert!(stderr.contains("would not start"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
