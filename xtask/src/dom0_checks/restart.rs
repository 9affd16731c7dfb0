//! dom0d restarted while a DomU does I/O (`dom0-restart`): the DomU survives and its I/O
//! resumes with no data lost.
//!
//! One boot, in order: pvdemo is created (its 64 MiB disk write/verify, then its vif at
//! 10.0.0.2); 3 s later, in the middle of the disk writes, dom0d is killed with SIGKILL and
//! started again the way `/init` starts it. pvdemo's disk test must complete and verify,
//! the image must hold exactly the pattern, Dom0 must reach pvdemo over the vif, and
//! `dom0 logs` (with the output from before the kill), `dom0 list` and
//! `dom0 block-list` must answer. Then a graceful restart (SIGTERM, start again) with
//! pvdemo's vif connected: ping and the TCP echo work again. Finally pvdemo is destroyed:
//! no TAP is left, dom0d's state file lists no domain, and free memory is back to the KiB.

use serde_json::Value;

use super::{
    Check, CheckRun, Dom0Scenario, Env, check, lines, ok_status, one_line, pvdemo_digest, require,
    same_free_memory, tagged_json,
};

/// The scenario.
pub(super) const DOM0_RESTART: Dom0Scenario = Dom0Scenario {
    name: "dom0-restart",
    guests: &[],
    checks: CHECKS,
    raw: None,
};

/// Starts dom0d as `/init` does and waits (up to 30 s) for its socket; the stale socket
/// of a killed dom0d goes first, so the wait means the new one serves.
macro_rules! start_dom0d {
    () => {
        "rm -f /run/dom0/control.sock\n\
         dom0d >>/var/log/dom0d.log 2>&1 &\n\
         i=0\n\
         while [ ! -S /run/dom0/control.sock ] && [ $i -lt 300 ]; do\n\
           sleep 0.1; i=$((i + 1))\n\
         done\n\
         echo \"restarted dom0d $(pidof dom0d)\"\n"
    };
}

const CHECKS: &[Check] = &[
    check(
        "kill-9-during-io",
        concat!(
            "dom0 host info -o jsonl >/tmp/restart-before\n\
             t0=$(date +%s)\n\
             dom0 create /etc/dom0/examples/pvdemo.toml >/dev/null\n\
             echo \"create-status $?\"\n\
             sleep 3\n\
             echo \"before-kill $(dom0 logs pvdemo | grep -c '^pvdemo: disk: xvda connected')\"\n\
             old=$(pidof dom0d)\n\
             kill -9 \"$old\"\n\
             while kill -0 \"$old\" 2>/dev/null; do sleep 0.1; done\n\
             echo \"killed dom0d $old at +$(($(date +%s) - t0)) s\"\n",
            start_dom0d!(),
            "echo \"dom0d back at +$(($(date +%s) - t0)) s\"\n\
             i=0\n\
             while ! dom0 logs pvdemo 2>/dev/null | grep -qE 'pvdemo: disk: (wrote|FAILED)' && [ $i -lt 1200 ]; do\n\
               sleep 0.1; i=$((i + 1))\n\
             done\n\
             echo \"disk test over at +$(($(date +%s) - t0)) s\"\n\
             i=0\n\
             while ! dom0 logs pvdemo 2>/dev/null | grep -q 'pvdemo: net: ' && [ $i -lt 300 ]; do\n\
               sleep 0.1; i=$((i + 1))\n\
             done\n\
             dom0 logs pvdemo | grep '^pvdemo'\n\
             echo \"image-sha256 $(head -c 67108864 /var/lib/dom0/disks/d1.img | sha256sum)\"\n\
             ping -c 3 10.0.0.2\n\
             dom0 list\n\
             dom0 block-list pvdemo\n\
             echo \"disks $(dom0 block-list pvdemo -o jsonl)\"\n\
             grep 'state: ' /var/log/dom0d.log | sed 's/^/dom0d-log /'"
        ),
        judge_kill,
    ),
    check(
        "sigterm-restart",
        concat!(
            "echo \"vifs-before $(dom0 network-list pvdemo -o jsonl)\"\n\
             old=$(pidof dom0d)\n\
             kill -TERM \"$old\"\n\
             while kill -0 \"$old\" 2>/dev/null; do sleep 0.1; done\n\
             echo \"stopped dom0d $old\"\n\
             if [ -e /run/dom0/control.sock ]; then echo 'socket left'; else echo 'socket removed'; fi\n",
            start_dom0d!(),
            "ping -c 3 10.0.0.2\n\
             (echo still-echoing-after-restarts; sleep 2) | timeout 6 nc 10.0.0.2 7\n\
             echo \"vifs $(dom0 network-list pvdemo -o jsonl)\"\n\
             dom0 info pvdemo | grep -E '^(name|console):'\n\
             echo \"adopted $(grep -c 'state: domain [0-9]* (pvdemo) adopted' /var/log/dom0d.log)\""
        ),
        judge_sigterm,
    ),
    check(
        "teardown",
        "echo \"before $(cat /tmp/restart-before)\"\n\
         dom0 destroy pvdemo; echo \"destroy-status $?\"\n\
         i=0\n\
         while [ \"$(dom0 list -o jsonl | wc -l)\" -gt 1 ] && [ $i -lt 100 ]; do\n\
           sleep 0.1; i=$((i + 1))\n\
         done\n\
         echo \"taps $(ls /sys/class/net | grep -c '^vif')\"\n\
         echo \"state $(tr -d ' \\n' </var/lib/dom0/state.json | grep -o '\"domains\":\\[[^]]*\\]')\"\n\
         grep -E ' (WARN|ERROR) ' /var/log/dom0d.log | sed 's/^/dom0d-log /'\n\
         echo \"after $(dom0 host info -o jsonl)\"",
        judge_teardown,
    ),
];

/// The JSON after `tag ` on its line.
fn json_after(run: &CheckRun, tag: &str) -> Result<Value, String> {
    let text = lines(run)
        .into_iter()
        .find_map(|x| x.strip_prefix(tag))
        .ok_or_else(|| format!("no `{tag}` line: {}", one_line(&run.output)))?;
    serde_json::from_str(text).map_err(|e| format!("`{tag}` is not JSON ({e}): {text}"))
}

/// pvdemo was connected before the kill, the new dom0d adopted it, the disk test
/// completed and verified with the pattern in the image, the history kept the lines from
/// before the kill, the ping was answered, and the disk is still Connected.
fn judge_kill(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    require(
        run,
        &[
            "create-status 0",
            "before-kill 1",
            "killed dom0d ",
            "pvdemo: disk: xvda connected",
            "pvdemo: disk: wrote and verified 64 MiB",
            "3 packets transmitted, 3 packets received",
            "(pvdemo) adopted from an earlier dom0d",
        ],
    )?;
    let l = lines(run);
    if !l
        .iter()
        .any(|x| x.starts_with("restarted dom0d ") && x.len() > "restarted dom0d ".len())
    {
        return Err(format!(
            "dom0d did not come back: {}",
            one_line(&run.output)
        ));
    }
    if !l
        .iter()
        .any(|x| x.split_whitespace().nth(1) == Some("pvdemo"))
    {
        return Err(format!(
            "`dom0 list` shows no pvdemo: {}",
            one_line(&run.output)
        ));
    }
    let got = l
        .iter()
        .find_map(|x| x.strip_prefix("image-sha256 "))
        .and_then(|x| x.split_whitespace().next())
        .ok_or_else(|| format!("no image-sha256 line: {}", one_line(&run.output)))?;
    let want = pvdemo_digest()?;
    if got != want {
        return Err(format!(
            "the image's first 64 MiB hash to {got}, the pattern to {want}"
        ));
    }
    let doc = json_after(run, "disks ")?;
    let text = doc.to_string();
    let connected = match doc
        .get("disks")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        Some([disk]) => {
            disk.get("connected").and_then(Value::as_bool) == Some(true)
                && disk.get("backend_state").and_then(Value::as_str) == Some("Connected")
        }
        _ => false,
    };
    if !connected {
        return Err(format!("xvda is not connected after the restart: {text}"));
    }
    Ok(())
}

/// dom0d stopped on SIGTERM (removing its socket), came back, and pvdemo's vif answers
/// ping and the TCP echo again; its counters went on from where they were.
fn judge_sigterm(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    require(
        run,
        &[
            "stopped dom0d ",
            "socket removed",
            "restarted dom0d ",
            "3 packets transmitted, 3 packets received",
            "still-echoing-after-restarts",
            "adopted 2",
        ],
    )?;
    if !lines(run).iter().any(|x| {
        x.strip_prefix("name:")
            .is_some_and(|name| name.trim() == "pvdemo")
    }) {
        return Err(format!(
            "`dom0 info pvdemo` failed: {}",
            one_line(&run.output)
        ));
    }
    let doc = json_after(run, "vifs ")?;
    let text = doc.to_string();
    let Some([vif]) = doc.get("vifs").and_then(Value::as_array).map(Vec::as_slice) else {
        return Err(format!("expected one vif: {text}"));
    };
    if vif.get("connected").and_then(Value::as_bool) != Some(true) {
        return Err(format!(
            "the vif is not connected after the restart: {text}"
        ));
    }
    let rx_packets = |v: &Value| {
        v.get("vifs")
            .and_then(|a| a.get(0))
            .and_then(|v| v.get("rx_packets"))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let (before, after) = (
        rx_packets(&json_after(run, "vifs-before ")?),
        rx_packets(&doc),
    );
    if before == 0 || after < before + 3 {
        return Err(format!(
            "the vif counted {before} received packets before the restart and {after} after: {text}"
        ));
    }
    Ok(())
}

/// pvdemo destroyed, no TAP left, the state file lists no domain, free memory is back.
fn judge_teardown(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    require(run, &["destroy-status 0", "taps 0", "state \"domains\":[]"])?;
    same_free_memory(&tagged_json(run)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: Env = Env { dom0_mem_mib: 512 };

    fn run(status: i32, output: &str) -> CheckRun {
        CheckRun {
            status,
            output: output.to_owned(),
        }
    }

    #[test]
    fn kill_judge() {
        let digest = pvdemo_digest().unwrap();
        let good = format!(
            "create-status 0\nbefore-kill 1\nkilled dom0d 71\nrestarted dom0d 99\n\
             pvdemo: console up\n\
             pvdemo: disk: xvda connected in 3 ms: 147456 sectors (72 MiB), event channel 3\n\
             pvdemo: disk: wrote and verified 64 MiB (write 9.0 MiB/s, read 11.0 MiB/s)\n\
             pvdemo: net: vif 0 connected, mac 00:16:3e:00:00:01, 10.0.0.2/24, event channel 7\n\
             image-sha256 {digest}  -\n\
             3 packets transmitted, 3 packets received, 0% packet loss\n\
             ID NAME STATE\n0 Domain-0 r-----\n1 pvdemo -b----\n\
             disks {{\"disks\":[{{\"vdev\":\"xvda\",\"backend_state\":\"Connected\",\"connected\":true}}]}}\n\
             dom0d-log 2025-01-01T00:00:00.000Z INFO  state: domain 1 (pvdemo) adopted from an earlier dom0d (1 disk(s), 1 vif(s), console)\n"
        );
        assert_eq!(judge_kill(&run(0, &good), &ENV), Ok(()));
        assert!(judge_kill(&run(1, &good), &ENV).is_err());
        let lost = good.replace("wrote and verified 64 MiB", "FAILED: timeout");
        assert!(judge_kill(&run(0, &lost), &ENV).is_err());
        let corrupt = good.replace(&digest, &"0".repeat(64));
        assert!(judge_kill(&run(0, &corrupt), &ENV).is_err());
        let history_lost = good.replace("pvdemo: disk: xvda connected in", "pvdemo: xvda in");
        assert!(judge_kill(&run(0, &history_lost), &ENV).is_err());
        let closed = good.replace("\"connected\":true", "\"connected\":false");
        assert!(judge_kill(&run(0, &closed), &ENV).is_err());
        let not_back = good.replace("restarted dom0d 99", "restarted dom0d ");
        assert!(judge_kill(&run(0, &not_back), &ENV).is_err());
    }

    #[test]
    fn sigterm_and_teardown_judges() {
        let good = "vifs-before {\"vifs\":[{\"handle\":0,\"connected\":true,\"rx_packets\":5}]}\n\
                    stopped dom0d 99\nsocket removed\nrestarted dom0d 120\n\
                    3 packets transmitted, 3 packets received, 0% packet loss\n\
                    still-echoing-after-restarts\n\
                    vifs {\"vifs\":[{\"handle\":0,\"connected\":true,\"rx_packets\":14}]}\n\
                    name:       pvdemo\nconsole:    900 bytes\nadopted 2\n";
        assert_eq!(judge_sigterm(&run(0, good), &ENV), Ok(()));
        let reset = good.replace("\"rx_packets\":14", "\"rx_packets\":3");
        assert!(judge_sigterm(&run(0, &reset), &ENV).is_err());
        let left = good.replace("socket removed", "socket left");
        assert!(judge_sigterm(&run(0, &left), &ENV).is_err());
        let deaf = good.replace("still-echoing-after-restarts\n", "");
        assert!(judge_sigterm(&run(0, &deaf), &ENV).is_err());

        let down = "before {\"mem_free_kib\": 10}\ndestroy-status 0\ntaps 0\n\
                    state \"domains\":[]\nafter {\"mem_free_kib\": 10}\n";
        assert_eq!(judge_teardown(&run(0, down), &ENV), Ok(()));
        let kept = down.replace("\"domains\":[]", "\"domains\":[{\"domid\":1}");
        assert!(judge_teardown(&run(0, &kept), &ENV).is_err());
        let leak = down.replace(
            "after {\"mem_free_kib\": 10}",
            "after {\"mem_free_kib\": 6}",
        );
        assert!(judge_teardown(&run(0, &leak), &ENV).is_err());
    }
}
