//! Pauses and failures for tests, compiled in only with the `failpoints` feature (the test suites enable
//! it; a release build has none). A pause is named by a place and a key (a volume's name), so
//! that tests running at once in one process keep apart: a test turns on
//! `"{name}::{key}"` with `fail::cfg(…, "return")`, learns that a task reached it through a
//! callback on `"{name}::{key}::reached"` (`fail::cfg_callback`), and lets the task go on with
//! `fail::remove`.

/// Waits while the pause `name` is on for `key`; does nothing without the `failpoints`
/// feature.
pub async fn pause(name: &str, key: &str) {
    #[cfg(feature = "failpoints")]
    {
        let point = format!("{name}::{key}");
        let mut told = false;
        while fail::eval(&point, |_| ()).is_some() {
            if !told {
                fail::eval(&format!("{point}::reached"), |_| ());
                told = true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (name, key);
}

/// Sleeps for the milliseconds the fail point `"{name}::{key()}"` returns, if it is on (a
/// test turns it on with `fail::cfg(…, "1*return(7000)")` to delay the first task that gets
/// there, and only that one); does nothing without the `failpoints` feature.
pub async fn delay(name: &str, key: impl FnOnce() -> String) {
    #[cfg(feature = "failpoints")]
    {
        let point = format!("{name}::{}", key());
        if let Some(ms) = fail::eval(&point, |arg| arg.and_then(|a| a.parse::<u64>().ok())) {
            tokio::time::sleep(std::time::Duration::from_millis(ms.unwrap_or(0))).await;
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = (name, key);
}

/// Whether the fail point `"{name}::{key()}"` is on: a test turns it on with
/// `fail::cfg(…, "return")` to make the step it guards fail; always false without the
/// `failpoints` feature.
pub fn fails(name: &str, key: impl FnOnce() -> String) -> bool {
    #[cfg(feature = "failpoints")]
    {
        fail::eval(&format!("{name}::{}", key()), |_| ()).is_some()
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = (name, key);
        false
    }
}
