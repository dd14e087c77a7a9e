// The Vercel AI SDK's default OpenAI provider, `openai(model)`, which calls the
// Responses API. Reads OPENAI_BASE_URL and OPENAI_API_KEY like any app would; prints
// one JSON line with what generateText and streamText returned.
import { openai } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const model = openai(process.env.METERGATE_TEST_MODEL ?? "gpt-4o-mini");

const generated = await generateText({
  model,
  prompt: "What does a gateway do?",
  maxRetries: 0,
});

const streamed = streamText({
  model,
  prompt: "Describe a river in one line.",
  maxRetries: 0,
});
let text = "";
for await (const delta of streamed.textStream) {
  text += delta;
}

console.log(
  JSON.stringify({
    generated: {
      text: generated.text,
      usage: generated.usage,
      responseId: generated.response.id,
    },
    streamed: {
      text,
      usage: await streamed.usage,
      responseId: (await streamed.response).id,
    },
  }),
);
