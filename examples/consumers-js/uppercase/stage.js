// Upper-cases text payloads. Payloads that are not UTF-8 are rejected (they
// go to the dead-letter topic), since retrying them can never succeed.
import { Output, Stage, exportStage } from "weir";

export class Uppercase extends Stage {
  handle(msg) {
    return [Output.reply(msg, msg.text().toUpperCase())];
  }
}

exportStage(Uppercase);
