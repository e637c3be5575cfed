//! Pauses for tests, compiled in only with the `failpoints` feature (the test suites enable
//! it; a release build has none). A test turns one on for one key (a volume's name) with
//! `fail::cfg(name, "return(key)")`, learns that a task reached it through a callback on
//! `"{name}::reached::{key}"` (`fail::cfg_callback`), and lets the task go on with
//! `fail::remove(name)`. Keys keep tests that run at once in one process apart.

/// Waits while the fail point `name` is on for `key`; does nothing without the `failpoints`
/// feature.
pub async fn pause(name: &str, key: &str) {
    #[cfg(feature = "failpoints")]
    {
        let mut told = false;
        while fail::eval(name, |arg| arg.as_deref() == Some(key)) == Some(true) {
            if !told {
                fail::eval(&format!("{name}::reached::{key}"), |_| ());
                told = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (name, key);
}
