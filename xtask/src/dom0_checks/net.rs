//! The PV network end to end (`dom0-pvnet`): pvdemo's vif on Dom0's bridge `br0`
//! (10.0.0.1/24), served by dom0d's net back-end through a TAP.
//!
//! One boot, in order: the issue's acceptance command (create pvdemo, its disk pattern
//! verified, Dom0 pings 10.0.0.2; waiting for pvdemo's start-up lines instead of a fixed
//! 20 s, since a scenario's speed depends on what else runs); Dom0 exchanges data with pvdemo's TCP echo
//! and HTTP services using busybox `nc` and `wget`; `dom0 network-list` shows the vif
//! connected with traffic counted; a second pvdemo (`pv2`, 10.0.0.3, no disk) reaches the
//! first over the bridge (TCP echo of 64 KiB, verified by pv2) and answers Dom0's ping; both
//! are destroyed, their TAPs are gone and free memory is back to the KiB.

use serde_json::Value;

use super::{
    Check, CheckRun, Dom0Scenario, Env, check, lines, ok_status, one_line, require,
    same_free_memory, tagged_json,
};

/// The scenario.
pub(super) const DOM0_PVNET: Dom0Scenario = Dom0Scenario {
    name: "dom0-pvnet",
    guests: &[],
    checks: CHECKS,
    raw: None,
};

const CHECKS: &[Check] = &[
    check(
        "acceptance",
        // The issue's command, with its `sleep 20` replaced by a wait for pvdemo's last
        // start-up line (the NIC comes up after the disk test): two scenarios share the
        // two host cores here, so it may take longer.
        "dom0 host info -o jsonl >/tmp/pvnet-before\n\
         dom0 create /etc/dom0/examples/pvdemo.toml || exit 1\n\
         i=0\n\
         while ! dom0 logs pvdemo | grep -qE 'pvdemo: net: (serving|FAILED|none)' && [ $i -lt 1200 ]; do\n\
           sleep 0.1; i=$((i + 1))\n\
         done\n\
         dom0 logs pvdemo && ping -c 3 10.0.0.2",
        judge_acceptance,
    ),
    check(
        "tcp-echo-and-http",
        "(echo hello-over-the-pv-net; sleep 2) | timeout 6 nc 10.0.0.2 7\n\
         echo \"nc-status $?\"\n\
         wget -q -O- http://10.0.0.2/\n\
         echo \"wget-status $?\"",
        judge_tcp,
    ),
    check(
        "network-list",
        "dom0 network-list pvdemo\n\
         echo \"vifs $(dom0 network-list pvdemo -o json | tr -d '\\n')\"",
        judge_network_list,
    ),
    check(
        "second-guest",
        "dom0 create /etc/dom0/examples/pvdemo.toml --set name=pv2 --set 'disk=[]' \
         --set 'vif=[\"bridge=br0,ip=10.0.0.3/24\"]' --set cmdline=peer=10.0.0.2 >/dev/null\n\
         echo \"create-status $?\"\n\
         i=0\n\
         while ! dom0 logs pv2 2>/dev/null | grep -q 'pvdemo: peer ' && [ $i -lt 600 ]; do\n\
           sleep 0.1; i=$((i + 1))\n\
         done\n\
         dom0 logs pv2 | grep '^pvdemo'\n\
         ping -c 2 10.0.0.3",
        judge_second_guest,
    ),
    check(
        "teardown",
        "echo \"before $(cat /tmp/pvnet-before)\"\n\
         dom0 destroy pvdemo; echo \"destroy-status $?\"\n\
         dom0 destroy pv2; echo \"destroy2-status $?\"\n\
         i=0\n\
         while [ \"$(dom0 list -o jsonl | wc -l)\" -gt 1 ] && [ $i -lt 100 ]; do\n\
           sleep 0.1; i=$((i + 1))\n\
         done\n\
         echo \"taps $(ls /sys/class/net | grep -c '^vif')\"\n\
         echo \"after $(dom0 host info -o jsonl)\"",
        judge_teardown,
    ),
];

/// The acceptance command exits 0, the disk pattern was verified, the vif came up with
/// pvdemo's address, and the three pings were answered.
fn judge_acceptance(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    require(
        run,
        &[
            "pvdemo: disk: wrote and verified 64 MiB",
            "pvdemo: net: vif 0 connected",
            "10.0.0.2/24",
            "3 packets transmitted, 3 packets received",
        ],
    )
}

/// The TCP echo service echoed Dom0's line, and the HTTP page came back.
fn judge_tcp(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    let l = lines(run);
    if !l.contains(&"hello-over-the-pv-net") {
        return Err(format!("no echo from port 7: {}", one_line(&run.output)));
    }
    require(run, &["wget-status 0", "pvdemo"])
}

/// `dom0 network-list -o json` lists vif 0 of pvdemo connected, with the address it was
/// given, a TAP, and packets counted both ways.
fn judge_network_list(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    let json = lines(run)
        .into_iter()
        .find_map(|x| x.strip_prefix("vifs "))
        .ok_or_else(|| format!("no JSON line: {}", one_line(&run.output)))?;
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("not JSON ({e}): {json}"))?;
    let vifs = doc
        .get("vifs")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no `vifs` array: {json}"))?;
    let [vif] = vifs.as_slice() else {
        return Err(format!("expected one vif: {json}"));
    };
    let text = vif.to_string();
    for want in ["10.0.0.2", "vif", "Connected", "br0"] {
        if !text.contains(want) {
            return Err(format!("vif lacks `{want}`: {text}"));
        }
    }
    for counter in ["tx_packets", "rx_packets"] {
        let n = vif.get(counter).and_then(Value::as_u64);
        if n.is_none_or(|n| n == 0) {
            return Err(format!("vif's {counter} is {n:?}, expected > 0: {text}"));
        }
    }
    Ok(())
}

/// pv2 came up at 10.0.0.3, echoed 64 KiB with pvdemo over the bridge, and answers Dom0.
fn judge_second_guest(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    require(
        run,
        &[
            "create-status 0",
            "pvdemo: disk: none",
            "10.0.0.3/24",
            "pvdemo: peer 10.0.0.2: echoed 65536 bytes ok",
            "2 packets transmitted, 2 packets received",
        ],
    )
}

/// Both destroyed, no vif TAP left, free memory back to the KiB.
fn judge_teardown(run: &CheckRun, _env: &Env) -> Result<(), String> {
    ok_status(run)?;
    require(run, &["destroy-status 0", "destroy2-status 0", "taps 0"])?;
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
    fn acceptance_judge() {
        let good = "pvdemo: console up\n\
                    pvdemo: disk: wrote and verified 64 MiB (write 9.0 MiB/s, read 11.0 MiB/s)\n\
                    pvdemo: net: vif 0 connected, mac 00:16:3e:00:00:01, 10.0.0.2/24, event channel 7\n\
                    3 packets transmitted, 3 packets received, 0% packet loss\n";
        assert_eq!(judge_acceptance(&run(0, good), &ENV), Ok(()));
        assert!(judge_acceptance(&run(1, good), &ENV).is_err());
        let lost = good.replace("3 packets received", "0 packets received");
        assert!(judge_acceptance(&run(0, &lost), &ENV).is_err());
        let failed = format!("{good}pvdemo: net: FAILED: timeout\n");
        assert!(judge_acceptance(&run(0, &failed), &ENV).is_err());
    }

    #[test]
    fn tcp_judge() {
        let good =
            "hello-over-the-pv-net\nnc-status 143\n<h1>pvdemo at 10.0.0.2</h1>\nwget-status 0\n";
        assert_eq!(judge_tcp(&run(0, good), &ENV), Ok(()));
        assert!(judge_tcp(&run(0, "nc-status 1\nwget-status 1\n"), &ENV).is_err());
        let no_http = good.replace("wget-status 0", "wget-status 1");
        assert!(judge_tcp(&run(0, &no_http), &ENV).is_err());
    }

    #[test]
    fn network_list_judge() {
        let vif = r#"{"handle":0,"mac":"00:16:3e:00:00:01","ip":"10.0.0.2/24","bridge":"br0","tap":"vif1.0","backend_state":"Connected","frontend_state":"Connected","tx_packets":5,"rx_packets":4}"#;
        let good = format!("table\nvifs {{\"vifs\":[{vif}]}}\n");
        assert_eq!(judge_network_list(&run(0, &good), &ENV), Ok(()));
        let idle = good.replace("\"rx_packets\":4", "\"rx_packets\":0");
        assert!(judge_network_list(&run(0, &idle), &ENV).is_err());
        assert!(judge_network_list(&run(0, "vifs {\"vifs\":[]}"), &ENV).is_err());
        assert!(judge_network_list(&run(0, "vifs nope"), &ENV).is_err());
    }

    #[test]
    fn second_guest_and_teardown_judges() {
        let good = "create-status 0\npvdemo: disk: none\n\
                    pvdemo: net: vif 0 connected, mac 00:16:3e:00:00:02, 10.0.0.3/24, event channel 7\n\
                    pvdemo: peer 10.0.0.2: echoed 65536 bytes ok\n\
                    2 packets transmitted, 2 packets received, 0% packet loss\n";
        assert_eq!(judge_second_guest(&run(0, good), &ENV), Ok(()));
        let bad = good.replace("echoed 65536 bytes ok", "FAILED: timeout");
        assert!(judge_second_guest(&run(0, &bad), &ENV).is_err());

        let down = "before {\"mem_free_kib\": 10}\ndestroy-status 0\ndestroy2-status 0\ntaps 0\n\
                    after {\"mem_free_kib\": 10}\n";
        assert_eq!(judge_teardown(&run(0, down), &ENV), Ok(()));
        assert!(judge_teardown(&run(0, &down.replace("taps 0", "taps 1")), &ENV).is_err());
        let leak = down.replace(
            "after {\"mem_free_kib\": 10}",
            "after {\"mem_free_kib\": 6}",
        );
        assert!(judge_teardown(&run(0, &leak), &ENV).is_err());
    }
}
