"""The real peers of the service tests start, answer and stop: Redis, PostgreSQL, headless Chromium."""

from __future__ import annotations

from pathlib import Path

import redis
import sqlalchemy
from selenium.webdriver.common.by import By

from tests.service.peers import chromium_driver, postgres_server, redis_server


def test_redis_set_get(tmp_path: Path) -> None:
    with redis_server(tmp_path) as url, redis.Redis.from_url(url) as client:
        assert client.set("gadsynth:peer", "ok")
        assert client.get("gadsynth:peer") == b"ok"


def test_postgres_select_1(tmp_path: Path) -> None:
    with postgres_server(tmp_path) as url:
        assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:") and url.endswith("/gadsynth")
        engine = sqlalchemy.create_engine(url)
        try:
            with engine.connect() as connection:
                assert connection.execute(sqlalchemy.text("select 1")).scalar_one() == 1
                assert connection.execute(sqlalchemy.text("select current_database()")).scalar_one() == "gadsynth"
        finally:
            engine.dispose()


def test_chromium_finds_h1() -> None:
    with chromium_driver() as driver:
        driver.get("data:text/html,<h1>hi</h1>")
        assert driver.find_element(By.TAG_NAME, "h1").text == "hi"
