"""The KHEOPS-like album page and the management commands."""

from __future__ import annotations

import re

import jwt

from tests.sandbox.sandbox_harness import FakeProvider, SandboxServer

_FORM = re.compile(r'<form method="post" action="([^"]+)" class="launch">(.*?)</form>', re.S)
_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def _forms(html: str) -> list[tuple[str, dict[str, str]]]:
    return [(action, dict(_HIDDEN.findall(body))) for action, body in _FORM.findall(html)]


def test_album_page_has_a_launch_form_per_study_and_matching_provider(
    sandbox: SandboxServer, fake_provider: FakeProvider, registered_provider: str
) -> None:
    mr_only = fake_provider.add_document("/mr-only", supported_modalities=["MR"])
    mr_client_id = sandbox.register_provider(mr_only, "MR viewer").json()["client_id"]
    broken = fake_provider.add_document("/broken", response_type="nonsense")
    response = sandbox.http.get(sandbox.url(f"/albums/{sandbox.demo_album_id}"))
    assert response.status_code == 200
    assert "<em>not</em> KHEOPS" in response.text
    assert "<script" not in response.text
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    forms = _forms(response.text)
    assert forms, response.text
    assert {action for action, _ in forms} == {sandbox.api("/report")}
    studies = {s["study_uid"]: s for s in sandbox.seeded["demo"]["studies"]}
    for _, fields in forms:
        assert set(fields) == {"access_token", "client_id", "studyUID", "return_uri"}
        if fields["client_id"] == mr_client_id:
            assert "MR" in studies[fields["studyUID"]]["modalities"]
    launched = {(f["client_id"], f["studyUID"]) for _, f in forms}
    for uid in studies:
        assert (registered_provider, uid) in launched
    assert broken not in response.text  # invalid providers are hidden, not linked
    # The form works as the KHEOPS UI's: submitting it launches.
    _, fields = forms[0]
    assert sandbox.http.post(sandbox.api("/report"), data=fields).status_code == 200


def test_album_page_acts_as_the_chosen_user(
    sandbox: SandboxServer, registered_provider: str
) -> None:
    response = sandbox.http.get(sandbox.url(f"/albums/{sandbox.demo_album_id}?as=carol"))
    assert "not a member" in response.text
    _, fields = _forms(response.text)[0]
    assert (
        jwt.decode(fields["access_token"], options={"verify_signature": False})[
            "preferred_username"
        ]
        == "carol"
    )
    assert sandbox.http.post(sandbox.api("/report"), data=fields).status_code == 403
    assert sandbox.http.get(sandbox.url("/albums/NoSuchAlbm")).status_code == 404
    assert (
        sandbox.http.get(sandbox.url(f"/albums/{sandbox.demo_album_id}?as=nobody")).status_code
        == 404
    )


def test_index_links_the_albums(sandbox: SandboxServer) -> None:
    response = sandbox.http.get(sandbox.url("/"))
    assert f"/albums/{sandbox.demo_album_id}" in response.text
    assert sandbox.http.get(sandbox.url("/static/sandbox/sandbox.css")).status_code == 200


def test_seed_is_idempotent(sandbox: SandboxServer) -> None:
    output = sandbox.manage("sandbox_seed").stdout
    assert f"demo_album {sandbox.demo_album_id}" in output
    assert f"other_album {sandbox.other_album_id}" in output
    state = sandbox.state()
    assert [a["album_id"] for a in state["albums"]] == [
        sandbox.demo_album_id,
        sandbox.other_album_id,
    ]
    assert len(state["users"]) == 3
    demo = state["albums"][0]
    assert {(m["username"], m["is_admin"]) for m in demo["members"]} == {
        ("alice", True),
        ("bob", False),
    }
    assert sandbox.other_study_uid not in sandbox.demo_study_uids


def test_register_provider_command_goes_through_the_api_and_is_idempotent(
    sandbox: SandboxServer, fake_provider: FakeProvider
) -> None:
    url = fake_provider.add_document("/command")
    fake_provider.requests.clear()
    args = ("sandbox_register_provider", sandbox.demo_album_id, url, "--name", "Via command")
    first = sandbox.manage(*args).stdout.strip()
    assert "/command" in fake_provider.requests  # validated like a real registration
    assert re.fullmatch(r"[A-Za-z0-9]{22}", first)
    assert sandbox.manage(*args).stdout.strip() == first
    refused = sandbox.manage(
        "sandbox_register_provider",
        sandbox.demo_album_id,
        fake_provider.base_url + "/nothing",
        check=False,
    )
    assert refused.returncode != 0
    assert "400" in refused.stderr


def test_user_token_command_prints_a_working_token(sandbox: SandboxServer) -> None:
    token = sandbox.manage("sandbox_user_token", "bob").stdout.strip()
    response = sandbox.http.get(
        sandbox.api(f"/albums/{sandbox.demo_album_id}/reportproviders"),
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200
    assert sandbox.manage("sandbox_user_token", "nobody", check=False).returncode != 0
