"""The supplier portal: server-rendered pages for suppliers (and the customer's answer to a
cancellation request), mounted on the API's app by ``mailveil.web.api.create_app``."""
