"""Settings: one typed object read from the environment (and an optional `.env`).

Secrets (tokens, keys) are only ever read here, from the environment; they are never logged
(`Settings.__repr__` hides them) and never written to the repository.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8",
                                      extra="ignore")

    database_url: str = Field("sqlite:///var/storefront.db", alias="DATABASE_URL")
    redis_url: str | None = Field(None, alias="REDIS_URL")
    store_currency: str = Field("CNY", alias="STORE_CURRENCY")
    operators: str = Field("", alias="STOREFRONT_OPERATORS")
    demo_catalogue: bool = Field(True, alias="STOREFRONT_DEMO_CATALOGUE")
    http_host: str = Field("127.0.0.1", alias="STOREFRONT_HTTP_HOST")
    http_port: int = Field(8080, alias="STOREFRONT_HTTP_PORT")
    # slow clients and floods (bot/http_guard.py, docs/deploy.md)
    http_header_timeout: float = Field(10.0, gt=0, alias="STOREFRONT_HTTP_HEADER_TIMEOUT")
    http_body_timeout: float = Field(10.0, gt=0, alias="STOREFRONT_HTTP_BODY_TIMEOUT")
    http_keepalive_timeout: int = Field(5, ge=1, alias="STOREFRONT_HTTP_KEEPALIVE_TIMEOUT")
    http_max_connections: int = Field(0, ge=0, alias="STOREFRONT_HTTP_MAX_CONNECTIONS")
    # where buyers and operators reach the HTTP server (bot/web: /app, /admin), for links
    public_url: str | None = Field(None, alias="STOREFRONT_PUBLIC_URL")
    release_times: str = Field("00:05", alias="STOREFRONT_RELEASE_TIMES")
    coverage_warning: str = Field("0.50", alias="STOREFRONT_COVERAGE_WARNING")
    charge_spool: str = Field("var/unrecorded_charges.jsonl", alias="STOREFRONT_CHARGE_SPOOL")
    matured_wait_warning_days: int = Field(7, alias="STOREFRONT_MATURED_WAIT_DAYS")
    # shipped orders count as received after this many days without a hold (docs/delivery.md)
    auto_receive_days: int = Field(10, ge=0, le=365, alias="STOREFRONT_AUTO_RECEIVE_DAYS")
    # bot/logs.py: how much is logged, and where ("-" = the terminal's stderr)
    log_level: str = Field("INFO", alias="STOREFRONT_LOG_LEVEL")
    log_file: str = Field("var/storefront.log", alias="STOREFRONT_LOG_FILE")

    telegram_bot_token: SecretStr | None = Field(None, alias="TELEGRAM_BOT_TOKEN")
    telegram_api_base_url: str = Field("https://api.telegram.org/bot",
                                       alias="TELEGRAM_API_BASE_URL")
    telegram_payment_provider_token: SecretStr | None = Field(
        None, alias="TELEGRAM_PAYMENT_PROVIDER_TOKEN")
    telegram_webhook_url: str | None = Field(None, alias="TELEGRAM_WEBHOOK_URL")
    telegram_webhook_secret: SecretStr | None = Field(None, alias="TELEGRAM_WEBHOOK_SECRET")

    wechat_token: SecretStr | None = Field(None, alias="WECHAT_TOKEN")
    wechat_app_id: str | None = Field(None, alias="WECHAT_APP_ID")
    wechat_app_secret: SecretStr | None = Field(None, alias="WECHAT_APP_SECRET")
    wechat_encoding_aes_key: SecretStr | None = Field(None, alias="WECHAT_ENCODING_AES_KEY")
    wechat_api_base_url: str | None = Field(None, alias="WECHAT_API_BASE_URL")
    wechat_notify_template_id: str | None = Field(None, alias="WECHAT_NOTIFY_TEMPLATE_ID")
    wechat_pay_mch_id: str | None = Field(None, alias="WECHAT_PAY_MCH_ID")
    wechat_pay_private_key_file: str | None = Field(None, alias="WECHAT_PAY_PRIVATE_KEY_FILE")
    wechat_pay_cert_serial: str | None = Field(None, alias="WECHAT_PAY_CERT_SERIAL")
    wechat_pay_apiv3_key: SecretStr | None = Field(None, alias="WECHAT_PAY_APIV3_KEY")
    wechat_pay_public_key_file: str | None = Field(None, alias="WECHAT_PAY_PUBLIC_KEY_FILE")
    wechat_pay_public_key_id: str | None = Field(None, alias="WECHAT_PAY_PUBLIC_KEY_ID")
    wechat_pay_notify_url: str | None = Field(None, alias="WECHAT_PAY_NOTIFY_URL")
    wechat_pay_api_base_url: str | None = Field(None, alias="WECHAT_PAY_API_BASE_URL")
    # Withdrawals paid by WeChat Pay merchant transfers (issue 17, docs/wechat.md)
    wechat_pay_transfer_scene_id: str = Field("1000", alias="WECHAT_PAY_TRANSFER_SCENE_ID")
    wechat_pay_transfer_remark: str = Field("钱包提现", alias="WECHAT_PAY_TRANSFER_REMARK")
    transfer_confirm_hours: float = Field(24.0, alias="STOREFRONT_TRANSFER_CONFIRM_HOURS",
                                          gt=0)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS:
            raise ValueError(f"STOREFRONT_LOG_LEVEL is one of {', '.join(LOG_LEVELS)}")
        return level

    def operator_ids(self) -> frozenset[str]:
        """`tg:<id>` / `wx:<openid>` identities allowed to run operator commands."""
        return frozenset(x.strip() for x in self.operators.split(",") if x.strip())

    @property
    def telegram_enabled(self) -> bool:
        return self.telegram_bot_token is not None

    @property
    def wechat_enabled(self) -> bool:
        return self.wechat_token is not None and self.wechat_app_id is not None

    @property
    def wechat_pay_configured(self) -> bool:
        """Every setting WeChat Pay needs is set (bot/wechatpay/config.py)."""
        return all((self.wechat_app_id, self.wechat_pay_mch_id, self.wechat_pay_private_key_file,
                    self.wechat_pay_cert_serial, self.wechat_pay_apiv3_key,
                    self.wechat_pay_public_key_file, self.wechat_pay_public_key_id,
                    self.wechat_pay_notify_url))


def load() -> Settings:
    return Settings()  # type: ignore[call-arg]
