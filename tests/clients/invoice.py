"""Creates an invoice and reads it back through the Python client generated from payrail's
/openapi.json by openapi-python-client: the request and response models are the generated ones, so
a field the document misnames or mistypes fails here.

Usage: python invoice.py BASE_URL API_KEY (with the generated package `payrail_client` importable)
"""

import sys

from payrail_client import AuthenticatedClient
from payrail_client.api.checkout import status as checkout_status
from payrail_client.api.invoices import invoices_create, invoices_show
from payrail_client.models import CreateInvoiceBody, ErrorBody, InvoiceView


def main(base: str, key: str) -> None:
    client = AuthenticatedClient(base_url=base, token=key, raise_on_unexpected_status=True)
    body = CreateInvoiceBody(amount="25.00", currency="USD", order_id="client-py", locale="ja", buyer_email="payer@example.com")
    created = invoices_create.sync(client=client, body=body)
    if not isinstance(created, InvoiceView):
        raise SystemExit(f"create answered {created!r}")
    shown = invoices_show.sync(created.id, client=client)
    if not isinstance(shown, InvoiceView):
        raise SystemExit(f"read answered {shown!r}")
    if (shown.id, shown.status.value, shown.amount, shown.order_id, shown.locale) != (created.id, "open", "25.00", "client-py", "ja"):
        raise SystemExit(f"read back otherwise: {shown.to_dict()}")
    if not shown.payment_options:
        raise SystemExit("no payment option")
    public = checkout_status.sync(created.id, client=client)
    if public is None or isinstance(public, ErrorBody) or public.locale != "ja":
        raise SystemExit(f"status answered {public!r}")
    missing = invoices_show.sync_detailed("inv_doesnotexist0000000000", client=client)
    if missing.status_code != 404 or not isinstance(missing.parsed, ErrorBody) or missing.parsed.error.code != "not_found":
        raise SystemExit(f"an unknown invoice answered {missing.status_code}: {missing.content!r}")
    print(f"python client: created and read back {created.id}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
