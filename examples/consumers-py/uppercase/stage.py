"""Upper-cases text payloads. Payloads that are not UTF-8 are rejected (they
go to the dead-letter topic), since retrying them can never succeed."""

import weir


class Uppercase(weir.Stage):
    def handle(self, msg):
        return [weir.Output.reply(msg, msg.text().upper())]


weir.export(Uppercase)
