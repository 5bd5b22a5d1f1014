"""Two-tier validation: schema findings, semantic findings, strictness, hostile input."""

from __future__ import annotations

import base64
import gzip
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.config.validate import Problem, Report, validate_documents, validate_text
from kairos.config.yamlload import Document, load

HEADER = "#cloud-config\n"


def run(body: str, strict: bool = False, source: str = "node.yaml") -> Report:
    return validate_text(HEADER + body, source, strict)


def paths(problems: tuple[Problem, ...]) -> list[str]:
    return [p.path for p in problems]


def only(problems: tuple[Problem, ...], path: str) -> Problem:
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, [str(p) for p in problems]
    return found[0]


# --- schema tier ----------------------------------------------------------------------------


def test_user_name_007_is_a_number_not_a_string() -> None:
    report = run("users:\n  - name: 007\n    passwd: kairos\n")
    problem = only(report.errors, "users[0].name")
    assert problem.line == 3
    assert "expected a string, got integer" in problem.message
    assert problem.hint is not None and "quote" in problem.hint
    assert str(problem).startswith("node.yaml:3: users[0].name: expected a string")


def test_quoted_user_name_is_fine() -> None:
    assert run('users:\n  - name: "007"\n').valid


def test_wrong_types_are_errors() -> None:
    report = run(
        "install:\n"
        "  auto: maybe\n"
        "  partitions:\n"
        "    oem:\n"
        "      size: 64M\n"
        "stages:\n"
        "  boot:\n"
        "    - commands: ls -l\n"
        "      sysctl: [a, b]\n"
    )
    assert paths(report.errors) == [
        "install.auto",
        "install.partitions.oem.size",
        "stages.boot[0].commands",
        "stages.boot[0].sysctl",
    ]
    assert "got string 'ls -l'" in report.errors[2].message
    assert report.errors[2].hint == "write it as a list, one '- item' per line"


def test_missing_required_key() -> None:
    report = run("users:\n  - passwd: x\n")
    problem = only(report.errors, "users[0]")
    assert problem.message == "missing required key 'name'"
    assert problem.line == 3


def test_unknown_step_key_warns_and_suggests() -> None:
    report = run("stages:\n  boot:\n    - name: a\n      commandz: [ls]\n      commands: [ls]\n")
    assert report.valid
    problem = only(report.warnings, "stages.boot[0].commandz")
    assert problem.line == 5
    assert problem.hint == "did you mean 'commands'?"


def test_unknown_top_level_key_warns() -> None:
    report = run("instal:\n  auto: true\n")
    problem = only(report.warnings, "instal")
    assert problem.hint == "did you mean 'install'?"


@pytest.mark.parametrize("how", ["flag", "config"])
def test_strict_makes_warnings_errors(how: str) -> None:
    body = "stages:\n  boot:\n    - commandz: [ls]\n      commands: [ls]\n"
    report = run(body + "strict: true\n") if how == "config" else run(body, strict=True)
    assert paths(report.errors) == ["stages.boot[0].commandz"]
    assert report.warnings == ()


def test_strict_false_in_config_keeps_warnings() -> None:
    report = run("strict: false\nfoo: 1\n")
    assert report.valid and paths(report.warnings) == ["foo"]


def test_yaml11_booleans_warn_only() -> None:
    report = run("install:\n  auto: yes\n  reboot: off\n")
    assert report.valid
    assert [p.hint for p in report.warnings] == ["write true", "write false"]
    assert not run("install:\n  auto: yes\n", strict=True).valid


def test_enum_and_pattern() -> None:
    report = run(
        "upgrade:\n  entry: recovry\n"
        "install:\n  device: sda\n"
        "stages:\n  boot:\n    - only_service_manager: runit\n      commands: [ls]\n"
    )
    assert paths(report.errors) == [
        "upgrade.entry",
        "install.device",
        "stages.boot[0].only_service_manager",
    ]
    assert report.errors[0].hint == "did you mean 'recovery'?"


def test_missing_top_level_users_is_not_a_warning() -> None:
    report = run("install:\n  auto: true\n  device: auto\n")
    assert report.valid and report.warnings == ()


def test_null_values_are_unset() -> None:
    report = run("users:\n  - name: kairos\n    ssh_authorized_keys:\ninstall:\nstages:\n")
    assert report.valid and report.warnings == ()


def test_cloud_init_compat_keys() -> None:
    report = run(
        "hostname: node-1\n"
        "ssh_authorized_keys: [github:someone]\n"
        "ssh_pwauth: false\n"
        "runcmd:\n  - echo hi\n  - [ls, -l]\n"
        "bootcmd: [echo early]\n"
        "growpart:\n  mode: auto\n  devices: [/]\n"
        "write_files:\n"
        "  - path: /etc/motd\n    content: hello\n    permissions: '0644'\n    owner: root:root\n"
        "users:\n  - name: kairos\n    groups: admin\n    lock_passwd: true\n    uid: 1000\n"
    )
    assert report.valid and report.warnings == (), [str(p) for p in report.warnings]


def test_every_step_type_is_accepted() -> None:
    report = run(
        """name: all
stages:
  boot:
    - name: everything
      if: '[ -e /dev/vda ]'
      node: '^node-.*'
      only_os: debian
      only_os_version: '12'
      only_arch: amd64
      only_service_manager: systemd
      if_files: {any: [/etc/a], all: [/etc/b], none: [/etc/c]}
      dns: {nameservers: [1.1.1.1], search: [lan], options: [rotate], path: /etc/resolv.conf}
      downloads: [{path: /tmp/x, url: 'https://example.com/x', permissions: 0644, timeout: 5}]
      git: {url: 'https://example.com/r.git', path: /srv/r, branch: main, branch_only: true,
            auth: {username: u, password: p, insecure: false}}
      ensure_entities: [{path: /etc/passwd, entity: 'kind: user'}]
      directories: [{path: /srv/d, permissions: 0755, owner: 0, group: 0}]
      files:
        - {path: /etc/a, content: aGk=, encoding: b64, permissions: 0600, owner_string: root}
      commands: [echo hi]
      delete_entities: [{path: /etc/passwd, entity: 'kind: user'}]
      hostname: node-1
      sysctl: {vm.swappiness: 10, net.ipv4.ip_forward: '1'}
      users:
        kairos: {passwd: x, groups: [admin], primary_group: kairos, ssh_authorized_keys: [k],
                 lock_passwd: true, uid: '1000', shell: /bin/bash, homedir: /home/kairos,
                 no_create_home: false, system: false}
      authorized_keys: {kairos: ['github:someone']}
      modules: [zfs]
      timesyncd: {NTP: pool.ntp.org}
      systemctl: {enable: [a], disable: [b], start: [c], mask: [d],
                  overrides: [{service: e, name: f.conf, content: '[Service]'}]}
      environment: {A: b}
      environment_file: /etc/environment
      systemd_firstboot: {keymap: us}
      datasource: {providers: [aws], path: /oem}
      layout:
        device: {label: COS_RECOVERY, path: /dev/vda}
        expand_partition: {size: 0}
        add_partitions: [{fsLabel: DATA, pLabel: data, size: 0, filesystem: ext4}]
      packages: {install: [vim], remove: [nano], refresh: true, upgrade: false}
      unpack_images: [{source: 'quay.io/x:y', target: /srv, platform: linux/amd64}]
      package_pins: {vim: '1.0'}
      dnf: {repos: []}
    - name: second
      after: [{name: all.everything}]
      commands: [true-ish]
"""
    )
    assert report.valid, [str(p) for p in report.errors]
    assert report.warnings == (), [str(p) for p in report.warnings]


def test_pass_through_blocks_accept_anything_inside() -> None:
    report = run(
        "k3s: {enabled: true, args: [--x], whatever: {deep: [1, 2]}}\n"
        "k3s-agent: {env: {K: v}}\n"
        "p2p: {network_token: t, vpn: {env: .....}}\n"
        "kcrypt: {challenger: {challenger_server: 'http://x'}}\n"
        "bundles: [{targets: ['container://x']}]\n"
        "kubevip: {eip: 1.2.3.4}\nkairos: {network_token: t}\n"
    )
    assert report.valid and report.warnings == ()
    assert paths(run("k3s: [1]\n").errors) == ["k3s"]


# --- semantic tier --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device",
    ["auto", "/dev/sda", "/dev/disk/by-id/ata-X", "/dev/disk/by-label/DISK", "script:///bin/x a"],
)
def test_good_devices(device: str) -> None:
    assert run(f"install:\n  device: '{device}'\n").valid


@pytest.mark.parametrize(
    "device", ["/dev/disk/by-partlabel/oem", "/dev/disk/by-partuuid/1234", "PARTLABEL=oem"]
)
def test_partition_devices_are_rejected(device: str) -> None:
    report = run(f"install:\n  device: '{device}'\n")
    assert "install.device" in paths(report.errors)


def test_templates_are_left_as_strings() -> None:
    report = run(
        "install:\n  device: '{{ .Values.disk }}'\n"
        "hostname: node-{{ trunc 4 .MachineID }}\n"
        "stages:\n  boot:\n    - hostname: 'x-{{ .Random }}'\n"
        "      files: [{path: /a, encoding: b64, content: '{{ .Values.b64 }}'}]\n"
    )
    assert report.valid and report.warnings == (), [str(p) for p in report.errors]


def test_only_one_size_zero_extra_partition() -> None:
    report = run(
        "install:\n  extra-partitions:\n"
        "    - {name: a, size: 0}\n    - {name: b, size: 100}\n    - {name: c}\n"
    )
    problem = only(report.errors, "install.extra-partitions[2].size")
    assert "so does extra partition 0" in problem.message
    assert problem.line == 6


def test_negative_sizes() -> None:
    report = run(
        "install:\n  partitions: {oem: {size: -1}}\n  extra-partitions: [{name: a, size: -3}]\n"
    )
    assert paths(report.errors) == [
        "install.partitions.oem.size",
        "install.extra-partitions[0].size",
    ]


def test_reboot_and_poweroff_conflict() -> None:
    assert paths(run("install:\n  reboot: true\n  poweroff: true\n").errors) == ["install.poweroff"]
    assert paths(run("reset:\n  reboot: true\n  poweroff: true\n").errors) == ["reset.poweroff"]


@pytest.mark.parametrize("mode", ["0o17777", "99999", "'0999'", "-1"])
def test_bad_permissions(mode: str) -> None:
    report = run(f"stages:\n  boot:\n    - files: [{{path: /a, permissions: {mode}}}]\n")
    report_wf = run(f"write_files: [{{path: /a, permissions: {mode}}}]\n")
    assert paths(report.errors) == ["stages.boot[0].files[0].permissions"]
    assert paths(report_wf.errors) == ["write_files[0].permissions"]


def test_permissions_in_range() -> None:
    assert run("stages:\n  boot:\n    - files: [{path: /a, permissions: 04755}]\n").valid
    # YAML 1.2 octal, as Go's decoder reads it.
    assert run("stages:\n  boot:\n    - files: [{path: /a, permissions: 0o4755}]\n").valid
    assert run("write_files: [{path: /a, permissions: '4755'}]\n").valid


def test_encodings() -> None:
    good = base64.b64encode(gzip.compress(b"hello")).decode()
    assert run(f"write_files: [{{path: /a, encoding: gzip+base64, content: '{good}'}}]\n").valid
    report = run(
        "write_files:\n"
        "  - {path: /a, encoding: rot13, content: x}\n"
        "  - {path: /b, encoding: base64, content: 'not base64!'}\n"
        "  - {path: /c, encoding: gz+b64, content: aGVsbG8=}\n"
    )
    assert paths(report.errors) == [
        "write_files[0].encoding",
        "write_files[1].content",
        "write_files[2].content",
    ]


def test_after_references() -> None:
    body = (
        "name: web\n"
        "stages:\n"
        "  boot:\n"
        "    - name: first\n      commands: [a]\n"
        "    - commands: [b]\n"
        "    - name: ok\n      after: [{name: web.first}, {name: web.1}]\n      commands: [c]\n"
        "    - name: bare\n      after: [{name: first}]\n      commands: [d]\n"
        "    - name: typo\n      after: [{name: web.frist}]\n      commands: [e]\n"
        "    - name: self\n      after: [{name: web.self}]\n      commands: [f]\n"
        "    - name: elsewhere\n      after: [{name: system.layout}]\n      commands: [g]\n"
        "  network:\n"
        "    - name: other-stage\n      after: [{name: web.first}]\n      commands: [h]\n"
    )
    report = run(body)
    assert paths(report.errors) == [
        "stages.boot[3].after[0].name",
        "stages.boot[4].after[0].name",
        "stages.boot[5].after[0].name",
        "stages.network[0].after[0].name",
    ]
    assert report.errors[0].hint == "write it as 'web.first'"
    assert "waits for itself" in report.errors[2].message
    # A reference to another config's step may be satisfied on the node: a warning.
    assert paths(report.warnings) == ["stages.boot[6].after[0].name"]


def test_after_across_documents() -> None:
    a = load(HEADER + "name: base\nstages:\n  boot:\n    - name: s\n      commands: [a]\n", "a")
    b = load(HEADER + "stages:\n  boot:\n    - after: [{name: base.s}]\n      commands: [b]\n", "b")
    report = validate_documents([a, b])
    assert report.valid and report.warnings == ()


def test_after_without_name_uses_the_source() -> None:
    body = "stages:\n  boot:\n    - name: a\n      commands: [x]\n"
    body += "    - after: [{name: node.yaml.a}]\n      commands: [y]\n"
    report = run(body)
    assert report.valid and report.warnings == ()


def test_duplicate_users() -> None:
    report = run("users:\n  - name: kairos\n  - name: other\n  - name: kairos\n")
    problem = only(report.errors, "users[2].name")
    assert "already defined at users[0]" in problem.message
    a = load(HEADER + "users: [{name: kairos}]\n", "a.yaml")
    b = load(HEADER + "users: [{name: kairos}]\n", "b.yaml")
    report = validate_documents([a, b])
    assert report.valid
    assert [(p.source, p.path) for p in report.warnings] == [("b.yaml", "users[0].name")]


def test_layout_rest_of_disk_must_be_last() -> None:
    report = run(
        "stages:\n  boot:\n    - layout:\n        device: {path: /dev/vda}\n"
        "        add_partitions:\n          - {fsLabel: A}\n          - {fsLabel: B, size: 10}\n"
    )
    assert paths(report.errors) == ["stages.boot[0].layout.add_partitions[0].size"]


def test_image_sources() -> None:
    assert run("install:\n  source: oci:quay.io/kairos/debian:v1\n").valid
    assert run("upgrade:\n  system: {uri: 'quay.io/kairos/debian:v1'}\n").valid
    assert run("upgrade:\n  system: {uri: 'registry:5000/kairos'}\n").valid
    report = run("upgrade:\n  system: {uri: 'ftp:/x'}\n")
    assert paths(report.errors) == ["upgrade.system.uri"]


def test_ssh_hardening_needs_a_key() -> None:
    report = run("install: {ssh_hardening: true}\nusers: [{name: kairos, passwd: x}]\n")
    assert paths(report.errors) == ["install.ssh_hardening"]
    assert paths(report.warnings) == ["users[0].passwd"]


def test_stage_name_typo_warns_but_custom_stages_do_not() -> None:
    report = run("stages:\n  initramf: [{commands: [a]}]\n  my-stage: [{commands: [b]}]\n")
    assert paths(report.warnings) == ["stages.initramf"]
    assert report.warnings[0].hint == "did you mean 'initramfs'?"


def test_hostname_must_be_valid() -> None:
    assert paths(run("hostname: 'bad_host name'\n").errors) == ["hostname"]


def test_step_without_action_warns() -> None:
    assert paths(run("stages:\n  boot:\n    - name: nothing\n").warnings) == ["stages.boot[0]"]


# --- documents, YAML and hostile input -------------------------------------------------


def test_invalid_yaml_reports_line_and_column() -> None:
    report = validate_text(HEADER + "install:\n  device: [a\n  auto: true\n", "bad.yaml")
    assert len(report.errors) == 1
    problem = report.errors[0]
    assert problem.source == "bad.yaml" and problem.line == 4
    assert re.search(r"invalid YAML at column \d+", problem.message)
    assert str(problem).startswith("bad.yaml:4: (yaml): invalid YAML at column")


def test_alias_bomb_fails_fast() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    text = HEADER + "\n".join(lines) + "\n"  # 9**9 strings once expanded
    start = time.perf_counter()
    report = validate_text(text, "bomb.yaml")
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5
    assert not report.valid
    assert "alias" in str(report.errors[0])


def test_deep_nesting_is_refused() -> None:
    report = validate_text(HEADER + "a: " + "[" * 500 + "]" * 500 + "\n", "deep.yaml")
    assert not report.valid


def test_several_problems_in_one_run() -> None:
    text = (
        HEADER
        + "install:\n"  # 2
        + "  device: /dev/disk/by-partlabel/x\n"  # 3
        + "  auto: 1\n"  # 4
        + "users:\n"  # 5
        + "  - name: 007\n"  # 6
        + "stages:\n"  # 7
        + "  boot:\n"  # 8
        + "    - files: [{path: /a, permissions: 99999}]\n"  # 9
        + "      after: [{name: node.yaml.missing}]\n"  # 10
        + "      comands: [x]\n"  # 11
    )
    report = validate_text(text, "node.yaml", strict=True)
    rendered = [str(p) for p in report.errors]
    assert [(p.line, p.path) for p in report.errors] == [
        (3, "install.device"),
        (4, "install.auto"),
        (6, "users[0].name"),
        (9, "stages.boot[0].files[0].permissions"),
        (10, "stages.boot[0].after[0].name"),
        (11, "stages.boot[0].comands"),
    ]
    for line in rendered:
        assert re.match(r"^node\.yaml:\d+: [\w.\[\]-]+: \S", line), line


def test_header_missing_warns() -> None:
    report = validate_text("install: {auto: true}\n", "x.yaml")
    assert report.valid and paths(report.warnings) == ["(header)"]


def test_empty_and_non_map_documents() -> None:
    assert run("").valid and paths(run("").warnings) == ["(top level)"]
    assert paths(run("- a\n- b\n").errors) == ["(top level)"]


def test_problem_format() -> None:
    assert str(Problem("f.yaml", 3, "a.b", "bad", "fix it")) == "f.yaml:3: a.b: bad (fix it)"
    assert str(Problem("f.yaml", None, "a", "bad")) == "f.yaml: a: bad"


def test_report_json_round_trip() -> None:
    report = run("users: [{name: 7}]\nfoo: 1\n")
    data = report.to_json()
    assert data["valid"] is False
    assert data["errors"][0]["path"] == "users[0].name"
    assert data["warnings"][0]["path"] == "foo"


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    ["install", "users", "stages", "write_files", "upgrade", "reset", "runcmd", "k3s", "x"]
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=4), st.booleans())
def test_validation_never_crashes(data: dict[str, object], strict: bool) -> None:
    report = validate_documents([Document(data, "fuzz.yaml", {})], strict)
    for problem in (*report.errors, *report.warnings):
        assert problem.message and problem.source == "fuzz.yaml"


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["commands", "files", "layout", "users", "after", "name", "if"]),
        _values,
        max_size=4,
    )
)
def test_step_validation_never_crashes(step: dict[str, object]) -> None:
    validate_documents([Document({"stages": {"boot": [step]}}, "fuzz.yaml", {})])


def test_after_cycles_are_errors() -> None:
    report = run(
        "name: c\nstages:\n  boot:\n"
        "    - name: a\n      after: [{name: c.b}]\n      commands: [x]\n"
        "    - name: b\n      after: [{name: c.a}]\n      commands: [y]\n"
        "    - name: d\n      after: [{name: c.a}]\n      commands: [z]\n"
    )
    assert paths(report.errors) == ["stages.boot[0].after[0].name", "stages.boot[1].after[0].name"]
    assert "wait for each other" in report.errors[0].message


def test_after_to_an_ambiguous_name_warns() -> None:
    report = run(
        "name: c\nstages:\n  boot:\n"
        "    - name: same\n      commands: [x]\n"
        "    - name: same\n      commands: [y]\n"
        "    - after: [{name: c.same}]\n      commands: [z]\n"
    )
    assert report.valid
    assert paths(report.warnings) == ["stages.boot[2].after[0].name"]


def test_duplicate_step_names_alone_are_fine() -> None:
    # Upstream's raw-image example names two steps "Repart image"; only `after:` cares.
    body = "stages:\n  boot:\n    - {name: r, commands: [x]}\n    - {name: r, commands: [y]}\n"
    report = run(body)
    assert report.valid and report.warnings == ()


def test_config_url_scheme() -> None:
    assert run("config_url: https://example.com/c.yaml\n").warnings == ()
    assert paths(run("config_url: example.com/c.yaml\n").warnings) == ["config_url"]


def test_empty_device_means_auto() -> None:
    assert run("install:\n  device: ''\n").valid


def test_type_errors_fall_back_to_the_description_as_hint() -> None:
    report = run("stages:\n  boot:\n    - files: [{path: /a, owner: root}]\n")
    assert [p.hint for p in report.errors] == ["user id; use owner_string for a name"]


def test_raw_gzip_content_as_latin1_text() -> None:
    content = gzip.compress(b"hello").decode("latin-1")
    doc = Document({"write_files": [{"path": "/a", "encoding": "gz", "content": content}]}, "x")
    assert validate_documents([doc]).valid
    doc = Document({"write_files": [{"path": "/a", "encoding": "gzip", "content": "plain"}]}, "x")
    assert paths(validate_documents([doc]).errors) == ["write_files[0].content"]


def test_gzip_bomb_content_is_checked_in_bounded_time() -> None:
    member = gzip.compress(b"\0" * (8 << 20), compresslevel=9)
    bomb = base64.b64encode(member * 64).decode()  # 512 MiB once inflated
    start = time.perf_counter()
    report = run(f"write_files: [{{path: /a, encoding: gz+b64, content: '{bomb}'}}]\n")
    assert report.valid
    assert time.perf_counter() - start < 0.5


def test_grub_options_typos_warn_other_variables_pass() -> None:
    report = run("install:\n  grub_options:\n    extra_cmdlin: quiet\n    my_var: x\n")
    assert report.valid
    assert paths(report.warnings) == ["install.grub_options.extra_cmdlin"]
    assert report.warnings[0].hint == "did you mean 'extra_cmdline'?"


def test_null_stage_and_map_values_are_unset() -> None:
    report = run("stages:\n  boot:\n")
    assert report.valid and report.warnings == ()
    assert run("stages:\n  boot:\n    - sysctl:\n        vm.swappiness:\n").valid
